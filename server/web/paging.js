// livedm's page: the table's search, status filters and pages. livedmd searches, filters and pages
// (get_overview); the page holds one page of rows. Uses app.js's state and helpers.
"use strict";

const PAGE_ROWS = 100;
const TYPING_PAUSE_MS = 250;

function filtering() {
  return Boolean($("#search").value.trim() || $("#session-status").value || $("#category-status").value);
}

function overviewParams() {
  const params = { page: state.page, page_size: PAGE_ROWS };
  const search = $("#search").value.trim();
  if (search) params.search = search;
  if ($("#session-status").value) params.session_status = $("#session-status").value;
  if ($("#category-status").value) params.category_status = $("#category-status").value;
  if (state.expandAll) {
    params.expand = true;
    if (state.collapsed.size) params.collapse = [...state.collapsed];
  } else {
    params.expand = [...state.expanded];
  }
  return params;
}

function toggleProject(uid, open) {
  const exceptions = state.expandAll ? state.collapsed : state.expanded;
  if (open === state.expandAll) exceptions.add(uid); else exceptions.delete(uid);
  guarded(loadOverview);
}

function setExpandAll(all) {
  Object.assign(state, { expandAll: all, expanded: new Set(), collapsed: new Set(), page: 1 });
  guarded(loadOverview);
}

function renderPager(overview) {
  const matches = filtering()
    ? ` · ${plural(overview.matched_sessions, "session")} in ${plural(overview.matched_projects, "project")} match` : "";
  let text;
  if (overview.rows === 0) text = filtering() ? "Nothing matches" : "No rows";
  else if (overview.first_row === 0) text = `Page ${overview.page} is past the end (${plural(overview.rows, "row")})`;
  else {
    text = `Rows ${overview.first_row.toLocaleString()}–${overview.last_row.toLocaleString()} of ` +
      `${overview.rows.toLocaleString()}${matches}`;
  }
  $("#pager-status").textContent = text;
  $("#prev-page").disabled = overview.page <= 1;
  $("#next-page").disabled = overview.page >= overview.pages;
}

function goToPage(page) {
  state.page = Math.max(1, page);
  guarded(loadOverview);
  if ($("#overview").getBoundingClientRect().top < 0) $("#table-tools").scrollIntoView();
}

// A search or filter shows the matching sessions (every project expanded) and starts at the first page;
// clearing them all brings back how the table was expanded before.
function filtersChanged() {
  const now = filtering();
  if (now !== Boolean(state.filteredFrom)) {
    const back = state.filteredFrom;
    state.filteredFrom = now ? { expandAll: state.expandAll, expanded: state.expanded, collapsed: state.collapsed } : null;
    Object.assign(state, now ? { expandAll: true, expanded: new Set(), collapsed: new Set() } : back);
  }
  state.page = 1;
  guarded(loadOverview);
}

function wirePaging() {
  let pause = null;
  const search = $("#search");
  search.addEventListener("input", () => {
    clearTimeout(pause);
    pause = setTimeout(filtersChanged, TYPING_PAUSE_MS);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || (event.key === "Escape" && search.value)) {
      if (event.key === "Escape") search.value = "";
      clearTimeout(pause);
      filtersChanged();
    }
  });
  for (const id of ["#session-status", "#category-status"]) $(id).addEventListener("change", filtersChanged);
  $("#prev-page").addEventListener("click", () => goToPage(state.page - 1));
  $("#next-page").addEventListener("click", () => goToPage(state.page + 1));
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.target.closest("input, select, textarea") || $("#table-view").hidden ||
        $("#dialog").open) return;
    event.preventDefault();
    search.focus();
    search.select();
  });
}
