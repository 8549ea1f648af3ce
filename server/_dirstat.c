/* Directory listing and stat loops for the session walk, with the GIL released for a whole directory or
 * batch. In Python every file costs a few microseconds of interpreter work around its stat, more than the
 * system call itself, and threads cannot overlap that work: here the loops run in C, so the walk's threads
 * list and stat in parallel on every core (and keep a network file system's round trips in flight).
 *
 * Names cross as str decoded like os.listdir does (the file system encoding, surrogateescape), so they
 * compare equal to what os.scandir gives. Numbers cross as packed native arrays (bytes), read with
 * array.array.frombytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define KIND_FILE 'f' /* anything that is neither a directory nor a symlink */
#define KIND_DIR 'd'
#define KIND_LINK 'l'

typedef struct {
    char *names; /* each name NUL-terminated, back to back */
    size_t names_len, names_cap;
    uint64_t *inos;
    char *kinds;
    size_t count, cap;
} Listing;

static void listing_free(Listing *l) {
    free(l->names);
    free(l->inos);
    free(l->kinds);
}

/* 0, or an errno. Runs without the GIL. */
static int listing_add(Listing *l, const char *name, uint64_t ino, char kind) {
    size_t len = strlen(name) + 1;
    if (l->names_len + len > l->names_cap) {
        size_t cap = l->names_cap ? l->names_cap * 2 : 1 << 16;
        while (cap < l->names_len + len) cap *= 2;
        char *grown = realloc(l->names, cap);
        if (!grown) return ENOMEM;
        l->names = grown;
        l->names_cap = cap;
    }
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        uint64_t *inos = realloc(l->inos, cap * sizeof *inos);
        if (!inos) return ENOMEM;
        l->inos = inos;
        char *kinds = realloc(l->kinds, cap);
        if (!kinds) return ENOMEM;
        l->kinds = kinds;
        l->cap = cap;
    }
    memcpy(l->names + l->names_len, name, len);
    l->names_len += len;
    l->inos[l->count] = ino;
    l->kinds[l->count] = kind;
    l->count++;
    return 0;
}

/* 0, or an errno. Runs without the GIL; `dir_fd` is left open. */
static int list_into(int dir_fd, Listing *l) {
    int fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0); /* closedir closes its own descriptor, not the caller's */
    if (fd < 0) return errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int err = errno;
        close(fd);
        return err;
    }
    rewinddir(dir); /* the duplicate shares the caller's offset */
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (!entry) {
            err = errno;
            break;
        }
        const char *name = entry->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
        char kind;
        switch (entry->d_type) {
        case DT_DIR: kind = KIND_DIR; break;
        case DT_LNK: kind = KIND_LINK; break;
        case DT_UNKNOWN: { /* some file systems leave the type out: ask the inode */
            struct stat st;
            if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* gone meanwhile */
            kind = S_ISDIR(st.st_mode) ? KIND_DIR : S_ISLNK(st.st_mode) ? KIND_LINK : KIND_FILE;
            break;
        }
        default: kind = KIND_FILE;
        }
        err = listing_add(l, name, (uint64_t)entry->d_ino, kind);
        if (err) break;
    }
    rewinddir(dir); /* leave the shared offset at the start, as os.listdir and os.scandir do */
    closedir(dir);
    return err;
}

static PyObject *names_to_list(const char *names, size_t count) {
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (!list) return NULL;
    const char *name = names;
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(name);
        PyObject *text = PyUnicode_DecodeFSDefaultAndSize(name, (Py_ssize_t)len);
        if (!text) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, text);
        name += len + 1;
    }
    return list;
}

PyDoc_STRVAR(list_dir_doc,
"list_dir(dir_fd) -> (names, inos, kinds)\n\n"
"The entries of an open directory, without '.' and '..': names (list of str), their inode numbers\n"
"(bytes of native uint64) and kinds (bytes: 'd' directory, 'l' symlink, 'f' anything else). Raises\n"
"OSError when the directory cannot be read.");

static PyObject *list_dir(PyObject *self, PyObject *args) {
    int dir_fd;
    if (!PyArg_ParseTuple(args, "i:list_dir", &dir_fd)) return NULL;
    Listing l = {0};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = list_into(dir_fd, &l);
    Py_END_ALLOW_THREADS
    if (err) {
        listing_free(&l);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *names = names_to_list(l.names, l.count);
    PyObject *inos = names ? PyBytes_FromStringAndSize((const char *)l.inos, (Py_ssize_t)(l.count * sizeof(uint64_t)))
                           : NULL;
    PyObject *kinds = inos ? PyBytes_FromStringAndSize(l.kinds, (Py_ssize_t)l.count) : NULL;
    listing_free(&l);
    if (!kinds) {
        Py_XDECREF(names);
        Py_XDECREF(inos);
        return NULL;
    }
    return Py_BuildValue("(NNN)", names, inos, kinds);
}

PyDoc_STRVAR(stat_names_doc,
"stat_names(dir_fd, names, follow, key_all) -> (sizes, keys, targets)\n\n"
"Stats each name in the open directory. `follow` (bytes, one per name; nonzero: a link to follow) says\n"
"which are symlinks to be measured by their target: those count only when the target is a regular file,\n"
"and their link text is read. The others are stat'ed themselves (a link as a link).\n"
"sizes: bytes of native int64, -1 where nothing could be measured. keys: bytes of native uint64 pairs\n"
"(dev, ino) of files that may be counted elsewhere too (every one when key_all, else those with more than\n"
"one hard link), (0, 0) for the others. targets: the link text (str) of each followed name, None where it\n"
"could not be read, in order of the followed names.");

typedef struct {
    const char *name;
    int follow;
    int64_t size;
    uint64_t dev, ino;
    char *target; /* malloc'ed; NULL: not read */
    ssize_t target_len;
} StatItem;

static void stat_one(int dir_fd, StatItem *item, int key_all) {
    struct stat st;
    item->size = -1;
    item->dev = item->ino = 0;
    if (item->follow) {
        char buf[4096];
        ssize_t len = readlinkat(dir_fd, item->name, buf, sizeof buf);
        if (len < 0 || len == (ssize_t)sizeof buf) return; /* not a link, or longer than any path */
        item->target = malloc((size_t)len);
        if (item->target) {
            memcpy(item->target, buf, (size_t)len);
            item->target_len = len;
        }
        if (fstatat(dir_fd, item->name, &st, 0) != 0 || !S_ISREG(st.st_mode)) return;
    } else if (fstatat(dir_fd, item->name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return;
    }
    item->size = (int64_t)st.st_size;
    if (key_all || st.st_nlink > 1) {
        item->dev = (uint64_t)st.st_dev;
        item->ino = (uint64_t)st.st_ino;
    }
}

static PyObject *stat_names(PyObject *self, PyObject *args) {
    int dir_fd, key_all;
    PyObject *names;
    Py_buffer follow;
    if (!PyArg_ParseTuple(args, "iO!y*p:stat_names", &dir_fd, &PyList_Type, &names, &follow, &key_all)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(names);
    if (follow.len != count) {
        PyBuffer_Release(&follow);
        PyErr_SetString(PyExc_ValueError, "follow must hold one byte per name");
        return NULL;
    }
    PyObject *encoded = PyList_New(count); /* keeps the bytes the items point into alive */
    StatItem *items = calloc((size_t)(count ? count : 1), sizeof *items);
    PyObject *result = NULL;
    if (!encoded || !items) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be str");
            goto done;
        }
        PyObject *raw = PyUnicode_EncodeFSDefault(name);
        if (!raw) goto done;
        PyList_SET_ITEM(encoded, i, raw);
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(raw)) != PyBytes_GET_SIZE(raw)) {
            PyErr_SetString(PyExc_ValueError, "a name holds a NUL byte");
            goto done;
        }
        items[i].name = PyBytes_AS_STRING(raw);
        items[i].follow = ((const char *)follow.buf)[i] != 0;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) stat_one(dir_fd, &items[i], key_all);
    Py_END_ALLOW_THREADS

    PyObject *sizes = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int64_t));
    PyObject *keys = PyBytes_FromStringAndSize(NULL, count * 2 * (Py_ssize_t)sizeof(uint64_t));
    PyObject *targets = PyList_New(0);
    if (!sizes || !keys || !targets) {
        Py_XDECREF(sizes);
        Py_XDECREF(keys);
        Py_XDECREF(targets);
        goto done;
    }
    int64_t *size_out = (int64_t *)PyBytes_AS_STRING(sizes);
    uint64_t *key_out = (uint64_t *)PyBytes_AS_STRING(keys);
    for (Py_ssize_t i = 0; i < count; i++) {
        size_out[i] = items[i].size;
        key_out[2 * i] = items[i].dev;
        key_out[2 * i + 1] = items[i].ino;
        if (!items[i].follow) continue;
        PyObject *target = items[i].target
                               ? PyUnicode_DecodeFSDefaultAndSize(items[i].target, items[i].target_len)
                               : Py_NewRef(Py_None);
        if (!target || PyList_Append(targets, target) != 0) {
            Py_XDECREF(target);
            Py_DECREF(sizes);
            Py_DECREF(keys);
            Py_DECREF(targets);
            goto done;
        }
        Py_DECREF(target);
    }
    result = Py_BuildValue("(NNN)", sizes, keys, targets);
done:
    if (items)
        for (Py_ssize_t i = 0; i < count; i++) free(items[i].target);
    free(items);
    Py_XDECREF(encoded);
    PyBuffer_Release(&follow);
    return result;
}


/* --- comparing a listing with what the last walk saw -------------------------------------------- */

typedef struct {
    const char *name;
    size_t len;
} Known;

static uint64_t name_hash(const char *name, size_t len) { /* FNV-1a */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return h;
}

typedef struct {
    Known *known;
    const uint64_t *known_inos;
    size_t known_count;
    int64_t *slots; /* index into known, -1 empty */
    size_t mask;
    char *present; /* per known entry: its kind if listed with the same name and inode, else 0 */
    size_t *fresh; /* indexes into the listing of files not in `known` as the same file */
    size_t fresh_count;
} Diff;

static void diff_free(Diff *d) {
    free(d->known);
    free(d->slots);
    free(d->present);
    free(d->fresh);
}

/* 0, or an errno. Runs without the GIL. */
static int diff_build(Diff *d, const char *names, size_t names_len) {
    size_t count = 0;
    if (names_len) {
        count = 1;
        for (size_t i = 0; i < names_len; i++) count += names[i] == '\0';
    }
    if (count != d->known_count) return EINVAL;
    d->known = calloc(count ? count : 1, sizeof *d->known);
    d->present = calloc(count ? count : 1, 1);
    size_t slots = 16;
    while (slots < 2 * count) slots *= 2;
    d->slots = malloc(slots * sizeof *d->slots);
    if (!d->known || !d->present || !d->slots) return ENOMEM;
    memset(d->slots, 0xff, slots * sizeof *d->slots);
    d->mask = slots - 1;
    const char *name = names;
    for (size_t i = 0; i < count; i++) {
        const char *end = memchr(name, '\0', (size_t)(names + names_len - name));
        size_t len = end ? (size_t)(end - name) : (size_t)(names + names_len - name);
        d->known[i].name = name;
        d->known[i].len = len;
        size_t slot = name_hash(name, len) & d->mask;
        while (d->slots[slot] >= 0) slot = (slot + 1) & d->mask;
        d->slots[slot] = (int64_t)i;
        name += len + 1;
    }
    return 0;
}

static int64_t diff_find(const Diff *d, const char *name, size_t len) {
    size_t slot = name_hash(name, len) & d->mask;
    for (;; slot = (slot + 1) & d->mask) {
        int64_t index = d->slots[slot];
        if (index < 0) return -1;
        const Known *k = &d->known[index];
        if (k->len == len && memcmp(k->name, name, len) == 0) return index;
    }
}

/* 0, or an errno. Runs without the GIL. */
static int diff_match(Diff *d, const Listing *l) {
    d->fresh = malloc((l->count ? l->count : 1) * sizeof *d->fresh);
    if (!d->fresh) return ENOMEM;
    const char *name = l->names;
    for (size_t i = 0; i < l->count; i++) {
        size_t len = strlen(name);
        if (l->kinds[i] != KIND_DIR) {
            int64_t index = diff_find(d, name, len);
            if (index >= 0 && d->known_inos[index] == l->inos[i] && !d->present[index])
                d->present[index] = l->kinds[i];
            else
                d->fresh[d->fresh_count++] = i;
        }
        name += len + 1;
    }
    return 0;
}

PyDoc_STRVAR(diff_dir_doc,
"diff_dir(dir_fd, known_names, known_inos) -> (subdirs, present, fresh_names, fresh_inos, fresh_kinds)\n\n"
"Lists an open directory against the files a last walk saw there: known_names NUL-separated (bytes, the\n"
"file system's encoding), known_inos their inode numbers (bytes of native uint64). subdirs: the\n"
"directories (list of str). present: one byte per known file, its kind ('f' or 'l') if it is still\n"
"there under its name as the same inode, else 0. fresh_*: the other files (names, inode numbers as\n"
"native uint64 bytes, kinds), as list_dir gives them. Python sees only the files that changed.");

static PyObject *diff_dir(PyObject *self, PyObject *args) {
    int dir_fd;
    Py_buffer names, inos;
    if (!PyArg_ParseTuple(args, "iy*y*:diff_dir", &dir_fd, &names, &inos)) return NULL;
    Listing l = {0};
    Diff d = {0};
    PyObject *result = NULL;
    int err = 0;
    if (inos.len % (Py_ssize_t)sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "known_inos must hold whole uint64s");
        goto done;
    }
    d.known_inos = (const uint64_t *)inos.buf;
    d.known_count = (size_t)inos.len / sizeof(uint64_t);
    Py_BEGIN_ALLOW_THREADS
    err = diff_build(&d, (const char *)names.buf, (size_t)names.len);
    if (!err) err = list_into(dir_fd, &l);
    if (!err) err = diff_match(&d, &l);
    Py_END_ALLOW_THREADS
    if (err == EINVAL) {
        PyErr_SetString(PyExc_ValueError, "known_names and known_inos disagree in number");
        goto done;
    }
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    PyObject *subdirs = PyList_New(0);
    PyObject *fresh_names = PyList_New((Py_ssize_t)d.fresh_count);
    PyObject *fresh_inos = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(d.fresh_count * sizeof(uint64_t)));
    PyObject *fresh_kinds = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)d.fresh_count);
    PyObject *present = PyBytes_FromStringAndSize(d.present, (Py_ssize_t)d.known_count);
    if (!subdirs || !fresh_names || !fresh_inos || !fresh_kinds || !present) goto fail;
    const char *name = l.names;
    size_t next_fresh = 0;
    for (size_t i = 0; i < l.count; i++) {
        size_t len = strlen(name);
        int is_fresh = next_fresh < d.fresh_count && d.fresh[next_fresh] == i;
        if (l.kinds[i] == KIND_DIR || is_fresh) {
            PyObject *text = PyUnicode_DecodeFSDefaultAndSize(name, (Py_ssize_t)len);
            if (!text) goto fail;
            if (is_fresh) {
                PyList_SET_ITEM(fresh_names, (Py_ssize_t)next_fresh, text);
                ((uint64_t *)PyBytes_AS_STRING(fresh_inos))[next_fresh] = l.inos[i];
                PyBytes_AS_STRING(fresh_kinds)[next_fresh] = l.kinds[i];
                next_fresh++;
            } else {
                int appended = PyList_Append(subdirs, text);
                Py_DECREF(text);
                if (appended != 0) goto fail;
            }
        }
        name += len + 1;
    }
    result = Py_BuildValue("(NNNNN)", subdirs, present, fresh_names, fresh_inos, fresh_kinds);
    goto done;
fail:
    Py_XDECREF(subdirs);
    Py_XDECREF(fresh_names);
    Py_XDECREF(fresh_inos);
    Py_XDECREF(fresh_kinds);
    Py_XDECREF(present);
done:
    listing_free(&l);
    diff_free(&d);
    PyBuffer_Release(&names);
    PyBuffer_Release(&inos);
    return result;
}

PyDoc_STRVAR(probe_names_doc,
"probe_names(dir_fd, known_names, known_inos, names) -> (indexes, inos, kinds)\n\n"
"What is now under each of `names` (list of str) in an open directory, against the files a last walk\n"
"saw there (known_names NUL-separated bytes, known_inos native uint64 bytes, as for diff_dir), without\n"
"listing the directory. indexes: native int64 bytes, the name's index among the known files or -1.\n"
"inos: native uint64 bytes, the inode under the name now (0: nothing there). kinds: one byte per name,\n"
"'d', 'l' or 'f' as list_dir gives them, 0 where nothing is there.");

/* Each wanted name's index among the known (NUL-separated) names, or -1: a table of the few wanted names,
 * and one pass over the many known ones (a table of those would cost a cache miss per known name). 0, or
 * EINVAL when the known names are not `known_count`. Runs without the GIL. */
static int find_wanted(const char *names, size_t names_len, size_t known_count, const char **wanted,
                       size_t wanted_count, int64_t *index_out) {
    size_t slots = 16;
    while (slots < 2 * wanted_count) slots *= 2;
    int64_t *table = malloc(slots * sizeof *table);
    size_t *lens = malloc((wanted_count ? wanted_count : 1) * sizeof *lens);
    if (!table || !lens) {
        free(table);
        free(lens);
        return ENOMEM;
    }
    memset(table, 0xff, slots * sizeof *table);
    for (size_t w = 0; w < wanted_count; w++) {
        index_out[w] = -1;
        lens[w] = strlen(wanted[w]);
        size_t slot = name_hash(wanted[w], lens[w]) & (slots - 1);
        while (table[slot] >= 0) slot = (slot + 1) & (slots - 1);
        table[slot] = (int64_t)w;
    }
    size_t seen = 0;
    const char *name = names, *end = names + names_len;
    while (names_len && name <= end) {
        const char *stop = memchr(name, '\0', (size_t)(end - name));
        size_t len = stop ? (size_t)(stop - name) : (size_t)(end - name);
        for (size_t slot = name_hash(name, len) & (slots - 1); table[slot] >= 0; slot = (slot + 1) & (slots - 1)) {
            size_t w = (size_t)table[slot];
            if (lens[w] == len && memcmp(wanted[w], name, len) == 0) {
                if (index_out[w] < 0) index_out[w] = (int64_t)seen;
                break;
            }
        }
        seen++;
        name += len + 1;
    }
    free(table);
    free(lens);
    return seen == known_count ? 0 : EINVAL;
}

static PyObject *probe_names(PyObject *self, PyObject *args) {
    int dir_fd;
    Py_buffer names, inos;
    PyObject *wanted;
    if (!PyArg_ParseTuple(args, "iy*y*O!:probe_names", &dir_fd, &names, &inos, &PyList_Type, &wanted)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(wanted);
    PyObject *encoded = PyList_New(count); /* keeps the bytes the names point into alive */
    const char **items = calloc((size_t)(count ? count : 1), sizeof *items);
    PyObject *indexes = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int64_t));
    PyObject *now_inos = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(uint64_t));
    PyObject *kinds = PyBytes_FromStringAndSize(NULL, count);
    int err = 0;
    if (!encoded || !items || !indexes || !now_inos || !kinds) {
        PyErr_NoMemory();
        goto fail;
    }
    if (inos.len % (Py_ssize_t)sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "known_inos must hold whole uint64s");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyList_GET_ITEM(wanted, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "names must be str");
            goto fail;
        }
        PyObject *raw = PyUnicode_EncodeFSDefault(name);
        if (!raw) goto fail;
        PyList_SET_ITEM(encoded, i, raw);
        const char *text = PyBytes_AS_STRING(raw);
        if ((Py_ssize_t)strlen(text) != PyBytes_GET_SIZE(raw) || strchr(text, '/') || !text[0] ||
            strcmp(text, ".") == 0 || strcmp(text, "..") == 0) {
            PyErr_SetString(PyExc_ValueError, "a name that is empty, '.' or '..', or holds a NUL or a '/'");
            goto fail;
        }
        items[i] = text;
    }
    size_t known_count = (size_t)inos.len / sizeof(uint64_t);
    int64_t *index_out = (int64_t *)PyBytes_AS_STRING(indexes);
    uint64_t *ino_out = (uint64_t *)PyBytes_AS_STRING(now_inos);
    char *kind_out = PyBytes_AS_STRING(kinds);
    Py_BEGIN_ALLOW_THREADS
    err = find_wanted((const char *)names.buf, (size_t)names.len, known_count, items, (size_t)count, index_out);
    for (Py_ssize_t i = 0; !err && i < count; i++) {
        struct stat st;
        if (fstatat(dir_fd, items[i], &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno != ENOENT && errno != ENOTDIR) err = errno; /* not knowing is no "gone" */
            ino_out[i] = 0;
            kind_out[i] = 0;
            continue;
        }
        ino_out[i] = (uint64_t)st.st_ino;
        kind_out[i] = S_ISDIR(st.st_mode) ? KIND_DIR : S_ISLNK(st.st_mode) ? KIND_LINK : KIND_FILE;
    }
    Py_END_ALLOW_THREADS
    if (err == EINVAL) {
        PyErr_SetString(PyExc_ValueError, "known_names and known_inos disagree in number");
        goto fail;
    }
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    result = Py_BuildValue("(NNN)", indexes, now_inos, kinds);
    indexes = now_inos = kinds = NULL;
fail:
    Py_XDECREF(indexes);
    Py_XDECREF(now_inos);
    Py_XDECREF(kinds);
    Py_XDECREF(encoded);
    free(items);
    PyBuffer_Release(&names);
    PyBuffer_Release(&inos);
    return result;
}

PyDoc_STRVAR(fs_magic_doc,
"fs_magic(fd) -> int\n\n"
"The type of the file system an open file is on (statfs's f_type: 0xEF53 ext2/3/4, 0x6969 NFS, ...).");

static PyObject *fs_magic(PyObject *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i:fs_magic", &fd)) return NULL;
    struct statfs st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fstatfs(fd, &st);
    Py_END_ALLOW_THREADS
    if (rc != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLong((unsigned long)(uint32_t)st.f_type);
}

PyDoc_STRVAR(tally_doc,
"tally(sizes, keys) -> (missing, plain_bytes, keyed_bytes, keyed_files)\n\n"
"A directory's totals from its files' sizes (native int64 bytes, -1: not there to measure) and keys\n"
"(native uint64 (dev, ino) pairs, (0, 0) for a file counted by itself; None: all are). missing: how many\n"
"sizes are -1. plain_bytes: the bytes of the files counted by themselves. keyed_bytes: the bytes of the\n"
"others, each (dev, ino) once (the size last given for it); keyed_files: how many distinct (dev, ino).");

typedef struct {
    uint64_t dev, ino;
    int64_t size;
    int used;
} KeySlot;

static PyObject *tally(PyObject *self, PyObject *args) {
    Py_buffer sizes, keys = {0};
    PyObject *keys_obj;
    if (!PyArg_ParseTuple(args, "y*O:tally", &sizes, &keys_obj)) return NULL;
    if (keys_obj != Py_None && PyObject_GetBuffer(keys_obj, &keys, PyBUF_SIMPLE) != 0) {
        PyBuffer_Release(&sizes);
        return NULL;
    }
    PyObject *result = NULL;
    size_t count = (size_t)sizes.len / sizeof(int64_t);
    if (sizes.len % (Py_ssize_t)sizeof(int64_t) != 0 ||
        (keys.buf && (size_t)keys.len != count * 2 * sizeof(uint64_t))) {
        PyErr_SetString(PyExc_ValueError, "sizes must hold whole int64s and keys one uint64 pair per size");
        goto done;
    }
    const int64_t *size = (const int64_t *)sizes.buf;
    const uint64_t *key = (const uint64_t *)keys.buf;
    long long missing = 0, plain = 0, keyed = 0, distinct = 0;
    size_t slots = 16;
    while (key && slots < 2 * count) slots *= 2;
    KeySlot *table = key ? calloc(slots, sizeof *table) : NULL;
    if (key && !table) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < count; i++) {
        if (size[i] < 0) {
            missing += size[i] == -1;
            continue;
        }
        if (!key || (key[2 * i] == 0 && key[2 * i + 1] == 0)) {
            plain += size[i];
            continue;
        }
        uint64_t dev = key[2 * i], ino = key[2 * i + 1];
        size_t slot = (size_t)((ino * 0x9E3779B97F4A7C15ULL) ^ dev) & (slots - 1);
        while (table[slot].used && (table[slot].dev != dev || table[slot].ino != ino)) slot = (slot + 1) & (slots - 1);
        table[slot].dev = dev;
        table[slot].ino = ino;
        table[slot].size = size[i];
        table[slot].used = 1;
    }
    for (size_t s = 0; table && s < slots; s++)
        if (table[s].used) {
            keyed += table[s].size;
            distinct++;
        }
    Py_END_ALLOW_THREADS
    free(table);
    result = Py_BuildValue("(LLLL)", missing, plain, keyed, distinct);
done:
    PyBuffer_Release(&sizes);
    if (keys.buf) PyBuffer_Release(&keys);
    return result;
}

static PyMethodDef methods[] = {
    {"list_dir", list_dir, METH_VARARGS, list_dir_doc},
    {"stat_names", stat_names, METH_VARARGS, stat_names_doc},
    {"diff_dir", diff_dir, METH_VARARGS, diff_dir_doc},
    {"probe_names", probe_names, METH_VARARGS, probe_names_doc},
    {"fs_magic", fs_magic, METH_VARARGS, fs_magic_doc},
    {"tally", tally, METH_VARARGS, tally_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dirstat",
    "Directory listing and stat loops that release the GIL for a whole directory or batch.", -1, methods,
};

PyMODINIT_FUNC PyInit__dirstat(void) { return PyModule_Create(&module); }
