"""cryoSPARC v4 project directories on disk, as cryoSPARC Live leaves them, with what livedm should find.

Field names are the published ones (cryosparc-tools `spec.py` ProjectDocument, the `Session` and `Exposure`
models, storage tools that read real v4 projects); see docs on what cryoSPARC writes where. The builder
records every byte it writes, so tests compare against these numbers, never against a walk of the tree by
livedm's own code.

Per session, under livedm's default layout rules (SPEC §1): import_movies/ is raw (links to movies outside
the project; bytes are each target's once, files are the links), motioncorrected/ micrographs, extract/
particles, thumbnails/ thumbnails (cryoSPARC writes none: its previews are in gridfs_data/), everything else
in the session directory metadata (ctfestimated/, pick/, gridfs_data/, exposures.bson).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson

DATATYPES = ("raw", "micrographs", "thumbnails", "particles", "metadata")
BASE_TIME = datetime(2024, 3, 1, 10, 2, 3, 123000, tzinfo=UTC)
_BLOCK = random.Random(1).randbytes(64 * 1024)


@dataclass(frozen=True)
class FileSizes:
    """Bytes of each kind of file; exposure i's files are these plus i, so no two are alike."""

    movie: int = 5000
    micrograph: int = 3000  # motioncorrected/*_patch_aligned.mrc
    micrograph_dw: int = 3100  # motioncorrected/*_patch_aligned_doseweighted.mrc
    background: int = 400  # motioncorrected/*_background.mrc
    trajectory: int = 240  # motioncorrected/*_traj.npy
    ctf_diag: int = 300  # ctfestimated/*_diag_plt.npy
    picks: int = 180  # pick/*.npy
    particles: int = 700  # extract/blob/*.mrc
    preview: int = 250  # gridfs_data/<id>, two per exposure (1x and 2x)


@dataclass
class SessionSpec:
    """One Live session to build. Exposure flags go in this order: the first `failed` exposures fail, the
    next `manual_rejected` and `threshold_rejected` are rejected, the next `deleted` are deleted, the rest
    are accepted."""

    number: int | None = None  # S<number>; default the next free one
    title: str | None = None
    status: str = "completed"
    session_dir: str | None = None  # default S<number>
    exposures: int = 3
    failed: int = 0
    manual_rejected: int = 0
    threshold_rejected: int = 0
    deleted: int = 0
    exposure_groups: int = 1  # each watching its own movies directory
    bson_documents: int = 1  # exposures.bson as this many documents, each with part of the list
    paused_times: int | None = None  # entries of paused_at; default 1 unless running
    deleted_session: bool = False
    data_management: bool | dict[str, Any] = False  # True: a v5-style block with the sizes written
    extra_fields: dict[str, Any] = field(default_factory=dict)  # merged into the workspace entry last


@dataclass
class CryosparcSession:
    session_uid: str
    workspace_uid: str
    session_dir: str
    title: str
    status: str
    doc: dict[str, Any]  # its entry in workspaces.json (the same object the project writes)
    raw_dirs: tuple[str, ...] = ()
    movies: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # total, accepted, rejected, failed
    created_at: str = ""
    completed_at: str | None = None
    paused_at: list[str] = field(default_factory=list)
    bytes_by_datatype: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATATYPES, 0))
    files_by_datatype: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATATYPES, 0))
    paths_by_datatype: dict[str, list[str]] = field(default_factory=lambda: {dt: [] for dt in DATATYPES})
    exposures_bson: Path | None = None

    def total_bytes(self) -> int:
        return sum(self.bytes_by_datatype.values())


@dataclass
class CryosparcProject:
    project_dir: Path
    uid: str
    title: str
    doc: dict[str, Any]  # project.json
    workspaces: list[Any]  # workspaces.json, in order (base workspaces included)
    movies_dir: Path
    sizes: FileSizes
    date_style: str
    sessions: dict[str, CryosparcSession] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    @property
    def project_json(self) -> Path:
        return self.project_dir / "project.json"

    @property
    def workspaces_json(self) -> Path:
        return self.project_dir / "workspaces.json"

    def bytes_by_datatype(self) -> dict[str, int]:
        return {dt: sum(s.bytes_by_datatype[dt] for s in self.sessions.values()) for dt in DATATYPES}

    def write_project_json(self) -> None:
        _write_atomic(self.project_json, _dumps(self.doc))

    def write_workspaces_json(self) -> None:
        _write_atomic(self.workspaces_json, _dumps(self.workspaces))

    # -- changes cryoSPARC makes ---------------------------------------------------------------------------

    def add_session(self, spec: SessionSpec | None = None, *, session_files: bool = True) -> CryosparcSession:
        session = _build_session(self, spec or SessionSpec(), session_files=session_files)
        self.write_workspaces_json()
        return session

    def remove_session(self, session_uid: str) -> None:
        """Its entry leaves workspaces.json; its files stay (as when a workspace entry is lost)."""
        session = self.sessions.pop(session_uid)
        self.workspaces.remove(session.doc)
        self.write_workspaces_json()

    def set_status(self, session_uid: str, status: str) -> None:
        self.set_session_field(session_uid, "status", status)
        self.sessions[session_uid].status = status

    def set_project_field(self, key: str, value: Any) -> None:
        self.doc[key] = value
        self.write_project_json()

    def delete_project_field(self, key: str) -> None:
        del self.doc[key]
        self.write_project_json()

    def set_session_field(self, session_uid: str, key: str, value: Any) -> None:
        self.sessions[session_uid].doc[key] = value
        self.write_workspaces_json()

    def add_workspace_entry(self, entry: Any) -> None:
        """Anything at all as one more element of workspaces.json."""
        self.workspaces.append(entry)
        self.write_workspaces_json()

    # -- damage ----------------------------------------------------------------------------------------------

    def truncate_project_json(self, keep_bytes: int | None = None) -> None:
        data = self.project_json.read_bytes()
        _write_atomic(self.project_json, data[: len(data) // 2 if keep_bytes is None else keep_bytes])

    def break_utf8_in_title(self) -> None:
        """A byte that is not UTF-8 (0xff) at the start of the title; everything else stays readable."""
        data = self.project_json.read_bytes()
        quoted = json.dumps(self.doc["title"], ensure_ascii=False).encode()
        at = data.index(b'"title": ' + quoted) + len(b'"title": "')
        _write_atomic(self.project_json, data[:at] + b"\xff" + data[at:])

    def write_project_json_bytes(self, data: bytes) -> None:
        _write_atomic(self.project_json, data)

    def workspaces_as_object(self) -> None:
        """workspaces.json as an object keyed by workspace uid, instead of cryoSPARC's list."""
        keyed = {entry.get("uid", str(i)): entry for i, entry in enumerate(self.workspaces) if isinstance(entry, dict)}
        _write_atomic(self.workspaces_json, _dumps(keyed))

    def truncate_exposures_bson(self, session_uid: str, keep_bytes: int) -> None:
        path = self.sessions[session_uid].exposures_bson
        assert path is not None, f"{session_uid} was built without session files"
        with open(path, "r+b") as f:
            f.truncate(keep_bytes)


# ---------------------------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, as tests put in: written as its "\ud800" escape
        return json.dumps(value, indent=2).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Written beside and renamed over: a new inode each time, so a rewrite within one clock tick still shows."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_sized(path: Path, nbytes: int) -> None:
    whole, rest = divmod(nbytes, len(_BLOCK))
    with open(path, "wb") as f:
        for _ in range(whole):
            f.write(_BLOCK)
        f.write(_BLOCK[:rest])


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _date(when: datetime, style: str) -> dict[str, Any]:
    """Extended JSON, as cryoSPARC dumps dates: relaxed ("$date": ISO), legacy (millis) or canonical."""
    millis = int((when - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))
    if style == "iso":
        return {"$date": _iso(when)}
    if style == "millis":
        return {"$date": millis}
    if style == "numberLong":
        return {"$date": {"$numberLong": str(millis)}}
    raise ValueError(f"date_style {style!r} is not iso, millis or numberLong")


def _object_id(rng: random.Random) -> str:
    return rng.randbytes(12).hex()


def slug_dir_name(title: str) -> str:
    """cryoSPARC v4 names a new project's directory after its title: "CS-" and the title in lower case."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"CS-{slug or 'project'}"


def import_signature(abs_path: str) -> int:
    """cryosparc-tools: the first 8 bytes of the sha1 of the movie's original absolute path, as a uint64."""
    return int.from_bytes(hashlib.sha1(abs_path.encode()).digest()[:8], "little")


def build_cryosparc_project(parent: Path, uid: str = "P12", title: str = "Apoferritin test",
                            sessions: list[SessionSpec] | None = None, *, movies_dir: Path,
                            instance_dir_name: str | None = None, dir_name: str | None = None,
                            recorded_dir: str | None = None, session_files: bool = True,
                            sizes: FileSizes | None = None, date_style: str = "iso",
                            base_workspaces: int = 1, seed: int | None = None) -> CryosparcProject:
    """A project directory `<parent>[/<instance_dir_name>]/<dir_name or CS-<title slug>>` holding project.json,
    workspaces.json (`base_workspaces` base workspaces W1.., then one live workspace per session) and, with
    `session_files`, each session's files, its movies under `movies_dir` and a J<n>/job.json per live job.

    `recorded_dir` is project.json's project_dir (default: the directory's absolute path, as cryoSPARC
    writes it). With `session_files=False` only the two JSON files are written (fast: for benchmarks).
    """
    number = int(uid[1:])
    rng = random.Random(seed if seed is not None else f"{uid}/{title}")
    base = parent / instance_dir_name if instance_dir_name else parent
    project_dir = base / (dir_name or slug_dir_name(title))
    if dir_name is None:
        suffix = 1
        while project_dir.exists():
            suffix += 1
            project_dir = base / f"{slug_dir_name(title)}-{suffix}"
    project_dir.mkdir(parents=True)
    owner = _object_id(rng)
    doc: dict[str, Any] = {
        "_id": _object_id(rng), "uid": uid, "uid_num": number, "title": title, "description": "",
        "project_dir": recorded_dir if recorded_dir is not None else str(project_dir.absolute()),
        "project_params_pdef": {}, "owner_user_id": owner, "created_at": _date(BASE_TIME, date_style),
        "deleted": False, "users_with_access": [owner], "size": 0,
        "last_accessed": {"name": "alice", "accessed_at": _date(BASE_TIME + timedelta(days=1), date_style)},
        "archived": False, "detached": False, "hidden": False, "project_stats": {},
        "generate_intermediate_results_settings": {},
    }
    workspaces: list[Any] = [{
        "_id": _object_id(rng), "uid": f"W{n}", "uid_num": n, "project_uid": uid, "project_uid_num": number,
        "created_at": _date(BASE_TIME, date_style), "created_by_user_id": owner, "deleted": False,
        "title": f"Workspace {n}", "description": None, "workspace_type": "base",
    } for n in range(1, base_workspaces + 1)]
    project = CryosparcProject(project_dir=project_dir, uid=uid, title=title, doc=doc, workspaces=workspaces,
                               movies_dir=movies_dir, sizes=sizes or FileSizes(), date_style=date_style, rng=rng)
    for spec in sessions if sessions is not None else [SessionSpec()]:
        _build_session(project, spec, session_files=session_files)
    doc["size"] = sum(total for dt, total in project.bytes_by_datatype().items() if dt != "raw")
    project.write_project_json()
    project.write_workspaces_json()
    return project


def build_facility(parent: Path, projects: int, sessions_per_project: int, *, movies_dir: Path,
                   session_files: bool = False, **kwargs: Any) -> list[CryosparcProject]:
    """Many projects P1..Pn ("Project n"), each with the same number of sessions (metadata only by default)."""
    return [build_cryosparc_project(parent, f"P{n}", f"Project {n}",
                                    [SessionSpec() for _ in range(sessions_per_project)], movies_dir=movies_dir,
                                    session_files=session_files, **kwargs)
            for n in range(1, projects + 1)]


# ---------------------------------------------------------------------------------------------------------


def _next_number(project: CryosparcProject) -> int:
    return max((int(uid[1:]) for uid in project.sessions), default=0) + 1


def _next_workspace(project: CryosparcProject) -> int:
    numbers = [int(e["uid"][1:]) for e in project.workspaces
               if isinstance(e, dict) and isinstance(e.get("uid"), str) and re.fullmatch(r"W\d+", e["uid"])]
    return max(numbers, default=0) + 1


def _build_session(project: CryosparcProject, spec: SessionSpec, *, session_files: bool) -> CryosparcSession:
    number = spec.number if spec.number is not None else _next_number(project)
    session_uid = f"S{number}"
    if session_uid in project.sessions:
        raise ValueError(f"{project.uid} already has {session_uid}")
    flagged = spec.failed + spec.manual_rejected + spec.threshold_rejected + spec.deleted
    if flagged > spec.exposures:
        raise ValueError(f"{flagged} flagged exposures but only {spec.exposures}")
    ws_number = _next_workspace(project)
    style = project.date_style
    created = BASE_TIME + timedelta(hours=number)
    paused_times = spec.paused_times if spec.paused_times is not None else (0 if spec.status == "running" else 1)
    paused = [created + timedelta(hours=1, minutes=10 * k) for k in range(paused_times)]
    completed = created + timedelta(hours=2) if spec.status in ("completed", "compacted", "compacting") else None
    session_dir = spec.session_dir or session_uid
    movies_root = project.movies_dir / f"{project.project_dir.name}-{session_uid}"
    suffix = 1
    while session_files and movies_root.exists():  # another instance's project of the same name
        suffix += 1
        movies_root = project.movies_dir / f"{project.project_dir.name}-{suffix}-{session_uid}"
    group_dirs = ([movies_root] if spec.exposure_groups == 1
                  else [movies_root / f"grid{k}" for k in range(1, spec.exposure_groups + 1)])
    total = spec.exposures - spec.deleted
    rejected = spec.manual_rejected + spec.threshold_rejected
    counts = {"total": total, "accepted": total - spec.failed - rejected, "rejected": rejected, "failed": spec.failed}
    doc: dict[str, Any] = {
        "_id": _object_id(project.rng), "uid": f"W{ws_number}", "uid_num": ws_number, "project_uid": project.uid,
        "project_uid_num": int(project.uid[1:]), "created_at": _date(created, style),
        "updated_at": _date(created + timedelta(hours=3), style), "created_by_user_id": project.doc["owner_user_id"],
        "deleted": spec.deleted_session, "title": spec.title if spec.title is not None else f"Session {number}",
        "description": "", "workspace_type": "live",
        "session_uid": session_uid, "session_uid_num": number, "session_dir": session_dir, "status": spec.status,
        "running_at": [_date(created + timedelta(minutes=1), style)],
        "paused_at": [_date(when, style) for when in paused],
        "completed_at": _date(completed, style) if completed else None,
        "exposure_groups": [{
            "exp_group_id": k, "file_engine_watch_path_abs": str(group_dir), "file_engine_filter": "*.tif",
            "file_engine_recursive": False, "file_engine_enable": spec.status == "running", "gainref_path": None,
            "num_exposures_found": len(range(k - 1, spec.exposures, spec.exposure_groups)),
        } for k, group_dir in enumerate(group_dirs, start=1)],
        "stats": {"total_exposures": total, "total_accepted": counts["accepted"], "total_rejected": rejected,
                  "total_failed": spec.failed, "total_ready": total - spec.failed, "total_in_progress": 0,
                  "manual_rejected": spec.manual_rejected},
        "live_session_job": f"J{number}",
    }
    session = CryosparcSession(session_uid=session_uid, workspace_uid=doc["uid"], session_dir=session_dir,
                               title=doc["title"], status=spec.status, doc=doc,
                               raw_dirs=tuple(str(d) for d in group_dirs), counts=counts, created_at=_iso(created),
                               completed_at=_iso(completed) if completed else None,
                               paused_at=[_iso(when) for when in paused])
    if session_files:
        _write_session_files(project, session, spec, group_dirs)
        (project.project_dir / f"J{number}").mkdir(exist_ok=True)
        job = {"uid": f"J{number}", "project_uid": project.uid, "job_type": "rtp_session",
               "workspace_uids": [doc["uid"]]}
        (project.project_dir / f"J{number}" / "job.json").write_text(json.dumps(job))
    if spec.data_management is True:
        doc["data_management"] = {dt: {"status": "active", "prev_status": None, "size": session.bytes_by_datatype[dt]}
                                  for dt in DATATYPES}
    elif isinstance(spec.data_management, dict):
        doc["data_management"] = spec.data_management
    doc.update(spec.extra_fields)
    project.workspaces.append(doc)
    project.sessions[session_uid] = session
    return session


def _write_session_files(project: CryosparcProject, session: CryosparcSession, spec: SessionSpec,
                         group_dirs: list[Path]) -> None:
    sizes, rng = project.sizes, project.rng
    root = project.project_dir / session.session_dir
    rel_root = session.session_dir
    for sub in ("import_movies", "motioncorrected", "ctfestimated", "pick", "extract/blob", "gridfs_data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for group_dir in group_dirs:
        group_dir.mkdir(parents=True, exist_ok=True)

    def put(datatype: str, rel: str, nbytes: int) -> str:
        _write_sized(root / rel, nbytes)
        session.bytes_by_datatype[datatype] += nbytes
        session.files_by_datatype[datatype] += 1
        session.paths_by_datatype[datatype].append(f"{rel_root}/{rel}")
        return f"{rel_root}/{rel}"

    exposures: list[dict[str, Any]] = []
    n_failed, n_manual = spec.failed, spec.failed + spec.manual_rejected
    n_threshold = n_manual + spec.threshold_rejected
    n_deleted = n_threshold + spec.deleted
    for i in range(spec.exposures):
        group = i % len(group_dirs)
        stem = f"FoilHole_{31000 + i}_Data_{29000 + i}_{i:04d}_20240301_{100203 + i}_fractions"
        movie = group_dirs[group] / f"{stem}.tif"
        _write_sized(movie, sizes.movie + i)
        session.movies.append(movie)
        sig = import_signature(str(movie))
        link = f"import_movies/{sig}_{movie.name}"
        (root / link).symlink_to(movie)
        session.bytes_by_datatype["raw"] += sizes.movie + i
        session.files_by_datatype["raw"] += 1
        session.paths_by_datatype["raw"].append(f"{rel_root}/{link}")
        failed, deleted = i < n_failed, n_threshold <= i < n_deleted
        exposure: dict[str, Any] = {
            "_id": _object_id(rng), "uid": i + 1, "project_uid": project.uid, "session_uid": session.session_uid,
            "exp_group_id": group + 1, "abs_file_path": str(movie), "size": sizes.movie + i,
            "discovered_at": BASE_TIME + timedelta(hours=int(session.session_uid[1:]), minutes=5 + i),
            "stage": "found" if failed else "ready", "deleted": deleted, "failed": failed,
            "fail_reason": "motion correction failed" if failed else "",
            "manual_reject": n_failed <= i < n_manual, "threshold_reject": n_manual <= i < n_threshold,
            "preview_img_1x": [], "preview_img_2x": [],
            "groups": {"exposure": {"movie_blob": {"path": f"{rel_root}/{link}", "import_sig": str(sig),
                                                   "format": "TIFF", "is_gain_corrected": False}}},
        }
        if not (failed or deleted):
            prefix = f"{sig}_{stem}"
            blobs = exposure["groups"]["exposure"]
            dose_weighted = f"motioncorrected/{prefix}_patch_aligned_doseweighted.mrc"
            blobs["micrograph_blob"] = {"path": put("micrographs", dose_weighted, sizes.micrograph_dw + i),
                                        "format": "MRC"}
            blobs["micrograph_blob_non_dw"] = {"path": put("micrographs", f"motioncorrected/{prefix}_patch_aligned.mrc",
                                                           sizes.micrograph + i), "format": "MRC"}
            blobs["background_blob"] = {"path": put("micrographs", f"motioncorrected/{prefix}_background.mrc",
                                                    sizes.background + i)}
            blobs["rigid_motion"] = {"path": put("micrographs", f"motioncorrected/{prefix}_traj.npy",
                                                 sizes.trajectory + i)}
            diag = put("metadata", f"ctfestimated/{prefix}_ctf_diag_plt.npy", sizes.ctf_diag + i)
            blobs["ctf"] = {"path": diag, "type": "patch"}
            blobs["ctf_stats"] = {"diag_image_path": diag}
            picks = put("metadata", f"pick/{prefix}_blob_picks.npy", sizes.picks + i)
            exposure["groups"]["particle_blob"] = {"path": picks, "count": 100 + i}
            particles = put("particles", f"extract/blob/{prefix}_particles.mrc", sizes.particles + i)
            exposure["groups"]["particle_extracted"] = [{"path": particles, "count": 90 + i, "picker_type": "blob"}]
            for key in ("preview_img_1x", "preview_img_2x"):
                preview_id = _object_id(rng)
                put("metadata", f"gridfs_data/{preview_id}", sizes.preview + i)
                exposure[key] = [preview_id]
        exposures.append(exposure)
    session.exposures_bson = root / "exposures.bson"
    data = encode_exposures(exposures, documents=spec.bson_documents)
    session.exposures_bson.write_bytes(data)
    session.bytes_by_datatype["metadata"] += len(data)
    session.files_by_datatype["metadata"] += 1
    session.paths_by_datatype["metadata"].append(f"{rel_root}/exposures.bson")


def encode_exposures(exposures: list[dict[str, Any]], *, documents: int = 1) -> bytes:
    """exposures.bson: the list split over `documents` BSON documents {"exposures": [...]}, one after another
    (with one, what storage tools read as decode_all(data)[0]["exposures"]). Empty parts still get a document."""
    size = -(-len(exposures) // documents) if exposures else 0
    parts = [exposures[k * size:(k + 1) * size] for k in range(documents)]
    return b"".join(bson.encode({"exposures": part}) for part in parts)


def write_big_exposures_bson(path: Path, *, exposures: int, preview_bytes: int, rejected_every: int = 0) -> None:
    """An exposures.bson of `exposures` exposures each embedding `preview_bytes` of preview, in one document,
    written piece by piece (one exposure in memory at a time). Every `rejected_every`-th is manually rejected."""
    preview = bson.Binary((_BLOCK * (preview_bytes // len(_BLOCK) + 1))[:preview_bytes])
    with open(path, "wb") as f:
        f.write(b"\0\0\0\0\x04exposures\0\0\0\0\0")  # document length, array element, array length: patched below
        for i in range(exposures):
            doc = {"uid": i + 1, "deleted": False, "failed": False, "stage": "ready",
                   "manual_reject": bool(rejected_every) and i % rejected_every == 0, "threshold_reject": False,
                   "preview_embedded": preview}
            f.write(b"\x03" + str(i).encode() + b"\0" + bson.encode(doc))
        f.write(b"\0\0")  # end of the array, end of the document
        end = f.tell()
        f.seek(0)
        f.write(end.to_bytes(4, "little", signed=True))
        f.seek(4 + 1 + len(b"exposures\0"))
        f.write((end - 4 - 1 - len(b"exposures\0") - 1).to_bytes(4, "little", signed=True))
