// livedm's page: background jobs (the progress cards, the Jobs tab) and hook run logs. Uses app.js's helpers.
"use strict";

const LOG_TAIL_BYTES = 65536;
const LOG_PIECE_BYTES = 1048576;  // the most get_job_log gives at once

function trackJob(jobId, label) {
  const bar = el("progress", { max: 1, value: 0 });
  const text = el("div", { class: "job-state" }, "queued");
  const card = el("div", { class: "job", dataset: { job: jobId } }, el("strong", {}, label), bar, text);
  $("#job-panel").append(card);
  const poll = async () => {
    let job;
    try { job = await rpc("get_job", { job_id: jobId }); } catch (err) { text.textContent = err.message; return; }
    const progress = job.progress || {};
    if (progress.total) { bar.max = progress.total; bar.value = progress.done || 0; }
    text.textContent = `${job.state}${progress.total ? ` — ${progress.done}/${progress.total}` : ""}` +
      `${progress.bytes_freed ? `, ${humanSize(progress.bytes_freed)} freed` : ""}`;
    if (job.state === "done") {
      bar.max = 1; bar.value = 1;
      card.classList.add("done");
      guarded(loadOverview);
      setTimeout(() => card.remove(), 8000);
    } else if (job.state === "failed") {
      card.classList.add("failed");
      text.textContent = `failed: ${job.error}`;
      card.append(el("button", { type: "button", onclick: () => card.remove() }, "Dismiss"));
      guarded(loadOverview);
    } else {
      setTimeout(poll, 500);
    }
  };
  poll();
}

async function loadJobs() {
  const jobs = await rpc("list_jobs", { limit: 100 });
  $("#jobs tbody").replaceChildren(...jobs.map((job) => {
    const p = job.params;
    const progress = job.progress || {};
    const what = [p.project_uid, p.session_uid, p.datatype, p.status].filter(Boolean).join(" ");
    return el("tr", { dataset: { job: job.id }, class: `job-${job.state}` }, el("td", {}, job.id),
      el("td", {}, job.kind), el("td", { class: "state" }, job.state), el("td", {}, what),
      el("td", {}, progress.total ? `${progress.done}/${progress.total}` : "–"),
      el("td", {}, shortTime(job.created_at)), el("td", { class: "error" }, job.error || ""),
      el("td", {}, job.kind === "hook"
        ? el("button", { type: "button", class: "log", onclick: () => showLog(job.id, `${what} (${job.state})`) }, "Log")
        : ""));
  }));
}

// A hook run's log: its tail in a dialog, and the whole as a download (read in pieces of whole characters).
async function showLog(jobId, about = "") {
  const body = el("div", { class: "log-view" });
  const shown = ask({ title: `Log of hook run ${jobId}${about ? ` · ${about}` : ""}`, body: [body], okLabel: "Close",
    wide: true });
  try {
    const piece = await rpc("get_job_log", { job_id: jobId, offset: null, limit: LOG_TAIL_BYTES });
    if (!piece.exists) {
      body.replaceChildren(el("p", {}, "No log yet: the run has not started."));
    } else {
      body.replaceChildren(
        el("p", { class: "log-about" }, piece.offset > 0
          ? `The last ${humanSize(piece.size - piece.offset)} of ${humanSize(piece.size)} (${piece.log}). `
          : `All of ${piece.log} (${humanSize(piece.size)}). `,
        el("button", { type: "button", id: "log-download", onclick: () => guarded(() => downloadLog(jobId)) },
          "Download the whole log")),
        el("pre", { id: "log-text" }, piece.text));
      const pre = $("#log-text");
      pre.scrollTop = pre.scrollHeight;  // the end is where a failure says why
    }
  } catch (err) {
    body.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
  return shown;
}

async function downloadLog(jobId) {
  const parts = [];
  let offset = 0, name = `${jobId}.log`;
  for (;;) {
    const piece = await rpc("get_job_log", { job_id: jobId, offset, limit: LOG_PIECE_BYTES });
    name = piece.log || name;
    parts.push(piece.text);
    if (piece.next_offset >= piece.size || piece.next_offset === offset) break;
    offset = piece.next_offset;
  }
  downloadText(name, parts.join(""));
}
