// The CI service's page: sign-in, the job list, a job with its live log.
// Everything it talks to is the API on the same origin, authenticated by the
// HttpOnly session cookie the server sets at sign-in; the key itself is only
// ever in the sign-in form's field, never in storage scripts can read.

import { LogModel, failureLines } from "./log-model.js";
import { LogView } from "./log-view.js";

/**
 * The job list asks again this often. Polling `GET /jobs` (one indexed query)
 * rather than a stream: the jobs change feed wakes on every job of every
 * user, so a per-tab stream would cost each replica work per change times open
 * tabs, while a poll costs one cheap request per tab and needs no state on the
 * replica. 1.5 s is "without reload" to a person; the log itself is streamed.
 */
const POLL_MS = 1500;
const STATUSES = ["queued", "running", "completed", "cancelled"];

const main = document.getElementById("main");
const signOutButton = document.getElementById("sign-out");
/** Stops the current view's timers and streams. */
let stopView = () => {};

class SignedOut extends Error {}

/** Calls the API; a refused or missing session is [`SignedOut`]. */
async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  const detail = (data && data.detail) || response.statusText;
  if (response.status === 401 || (response.status === 403 && detail === "Not authenticated")) {
    throw new SignedOut(detail);
  }
  if (!response.ok) throw new Error(detail);
  return data;
}

/** Builds an element: `el("a", {href: "/"}, "text", child)`. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function statusWord(job) {
  if (job.status === "completed") return job.success ? "passed" : "failed";
  return job.status;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function duration(job) {
  if (!job.start_time) return "";
  const end = job.end_time ? new Date(job.end_time) : new Date();
  const s = Math.max(0, Math.round((end - new Date(job.start_time)) / 1000));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
}

/** Test counts, once the server reports them (`tests: {passed, failed, …}`). */
function testCounts(job) {
  const t = job.tests || job.test_counts;
  if (!t || typeof t !== "object") return "";
  return Object.entries(t)
    .filter(([k, n]) => typeof n === "number" && k !== "duration_seconds")
    .map(([k, n]) => `${n} ${k}`)
    .join(", ");
}

function python(job) {
  return job.python || job.python_version || "";
}

function showSignIn(message) {
  stopView();
  signOutButton.hidden = true;
  const key = el("input", {
    type: "password",
    id: "api-key",
    name: "api-key",
    autocomplete: "off",
    placeholder: "ci_…",
    required: true,
  });
  const error = el("p", { class: "error", id: "sign-in-error" }, message || "");
  const form = el(
    "form",
    { id: "sign-in", class: "sign-in" },
    el("h1", {}, "Sign in"),
    el("label", { for: "api-key" }, "API key"),
    key,
    el("button", { type: "submit" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/session", { api_key: key.value });
      key.value = "";
      route();
    } catch (e) {
      key.value = "";
      error.textContent = e instanceof SignedOut ? "That key is not valid." : String(e.message);
    }
  });
  main.replaceChildren(form);
  key.focus();
}

signOutButton.addEventListener("click", async () => {
  try {
    await api("DELETE", "/session");
  } finally {
    showSignIn("Signed out.");
  }
});

async function showList() {
  const statusFilter = el(
    "select",
    { id: "status-filter" },
    el("option", { value: "" }, "all statuses"),
    el("option", { value: "passed" }, "passed"),
    el("option", { value: "failed" }, "failed"),
    ...STATUSES.map((s) => el("option", { value: s }, s)),
  );
  const projectFilter = el("input", { id: "project-filter", type: "search", placeholder: "project" });
  const body = el("tbody", { id: "jobs" });
  const empty = el("p", { class: "empty", hidden: true }, "No jobs yet. Submit one with ci submit.");
  let jobs = await api("GET", "/jobs");
  let shown = "";

  const render = () => {
    const status = statusFilter.value;
    const project = projectFilter.value.trim().toLowerCase();
    const rows = jobs.filter(
      (j) =>
        (!status || j.status === status || statusWord(j) === status) &&
        (!project || String(j.project || "").toLowerCase().includes(project)),
    );
    const key = JSON.stringify([rows, status, project, rows.some((j) => !j.end_time) ? Math.floor(Date.now() / 1000) : 0]);
    if (key === shown) return;
    shown = key;
    empty.hidden = jobs.length > 0;
    body.replaceChildren(
      ...rows.map((j) =>
        el(
          "tr",
          { "data-job": j.job_id, class: `status-${statusWord(j)}` },
          el("td", {}, el("span", { class: `badge ${statusWord(j)}` }, statusWord(j))),
          el("td", {}, el("a", { href: `/jobs/${j.job_id}`, class: "job-link" }, j.job_id.slice(0, 8))),
          el("td", { class: "project" }, String(j.project || "")),
          el("td", { class: "python" }, python(j)),
          el("td", {}, when(j.start_time)),
          el("td", { class: "duration" }, duration(j)),
          el("td", { class: "tests" }, testCounts(j)),
        ),
      ),
    );
  };
  statusFilter.addEventListener("change", render);
  projectFilter.addEventListener("input", render);

  signOutButton.hidden = false;
  main.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", {}, "Jobs"), statusFilter, projectFilter),
    el(
      "table",
      { class: "jobs" },
      el(
        "thead",
        {},
        el("tr", {}, ...["Status", "Job", "Project", "Python", "Started", "Duration", "Tests"].map((h) => el("th", {}, h))),
      ),
      body,
    ),
    empty,
  );
  render();

  let timer = 0;
  let stopped = false;
  const poll = async () => {
    try {
      if (!document.hidden) {
        jobs = await api("GET", "/jobs");
        render();
      }
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn("Your session ended; sign in again.");
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  timer = setTimeout(poll, POLL_MS);
  stopView = () => {
    stopped = true;
    clearTimeout(timer);
  };
}

async function showJob(id) {
  let job = await api("GET", `/jobs/${id}`);
  signOutButton.hidden = false;
  const model = new LogModel();

  const badge = el("span", { class: "badge", id: "job-status" });
  const times = el("dl", { class: "times" });
  const cancel = el("button", { id: "cancel", type: "button" }, "Cancel");
  const followButton = el("button", { id: "follow", type: "button", class: "on" }, "Following");
  const failureButton = el("button", { id: "first-failure", type: "button", disabled: true }, "First failure");
  const searchBox = el("input", { id: "search", type: "search", placeholder: "search the whole log" });
  const prev = el("button", { id: "search-prev", type: "button", title: "previous (Shift+Enter)" }, "↑");
  const next = el("button", { id: "search-next", type: "button", title: "next (Enter)" }, "↓");
  const found = el("span", { id: "search-count", class: "count" });
  const streamState = el("span", { id: "stream-state", class: "stream-state" }, "connecting…");
  const scroller = el("div", { id: "log", class: "log", tabindex: "0" });
  const failedTests = el("section", { id: "failed-tests", class: "failed-tests", hidden: true });
  const view = new LogView(scroller, model, (on) => {
    followButton.classList.toggle("on", on);
    followButton.textContent = on ? "Following" : "Follow";
  });

  const renderSummary = () => {
    const word = statusWord(job);
    badge.className = `badge ${word}`;
    badge.textContent = word;
    const rows = [
      ["Started", when(job.start_time)],
      ["Ended", when(job.end_time)],
      ["Duration", duration(job)],
      ["Exit code", job.exit_code ?? ""],
      ["Python", python(job)],
      ["Tests", testCounts(job)],
    ];
    times.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
    cancel.hidden = job.status === "completed" || job.status === "cancelled";
  };
  renderSummary();

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await api("POST", `/jobs/${id}/cancel`);
      renderSummary();
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn("Your session ended; sign in again.");
      streamState.textContent = `cancel failed: ${e.message}`;
    } finally {
      cancel.disabled = false;
    }
  });
  followButton.addEventListener("click", () => view.setFollowing(!view.following));
  failureButton.addEventListener("click", () => {
    if (model.firstFailure >= 0) location.hash = `#L${model.firstFailure + 1}`;
  });

  // Search: every line of the log, not only those on screen.
  let term = "";
  let matches = [];
  let total = 0;
  let at = -1;
  const showMatch = () => {
    view.setMatches(matches, matches[at] ?? -1);
    if (at >= 0) view.scrollToLine(matches[at]);
    found.textContent = term ? (matches.length ? `${at + 1} / ${matches.length} lines (${total} matches)` : "no matches") : "";
  };
  const runSearch = () => {
    term = searchBox.value;
    ({ lines: matches, count: total } = model.search(term));
    countTail();
    const top = view.topLine();
    at = matches.length ? Math.max(0, matches.findIndex((l) => l >= top)) : -1;
    showMatch();
  };
  // New output while a search is shown: its matches join the list.
  // The last line may still grow: its matches are counted again.
  let tail = { index: -1, count: 0 };
  const countTail = () => {
    const index = model.length - 1;
    tail = { index, count: index >= 0 ? model.search(term, index).count : 0 };
  };
  const extendSearch = (first) => {
    const kept = matches.filter((l) => l < first);
    const fresh = model.search(term, first);
    if (tail.index === first) total -= tail.count;
    total += fresh.count;
    countTail();
    matches = kept.concat(fresh.lines);
    view.setMatches(matches, matches[at] ?? -1);
    found.textContent = matches.length ? `${Math.max(at, 0) + 1} / ${matches.length} lines (${total} matches)` : "no matches";
  };
  const step = (delta) => {
    if (searchBox.value !== term) return runSearch();
    if (!matches.length) return;
    at = (at + delta + matches.length) % matches.length;
    showMatch();
  };
  let searchTimer = 0;
  searchBox.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 120);
  });
  searchBox.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    clearTimeout(searchTimer);
    step(e.shiftKey ? -1 : 1);
  });
  next.addEventListener("click", () => step(1));
  prev.addEventListener("click", () => step(-1));

  const onHash = () => {
    const m = /^#L(\d+)$/.exec(location.hash);
    if (m) view.setHighlight(Number(m[1]) - 1);
  };
  window.addEventListener("hashchange", onHash);

  main.replaceChildren(
    el(
      "div",
      { class: "job-head" },
      el("a", { href: "/", class: "back" }, "← Jobs"),
      el("h1", {}, `Job ${id.slice(0, 8)}`),
      badge,
      cancel,
      el("a", { href: `/jobs/${id}/log`, download: `job-${id}.log`, id: "download", class: "button" }, "Raw log"),
    ),
    times,
    el("div", { class: "toolbar log-tools" }, followButton, failureButton, searchBox, prev, next, found, streamState),
    failedTests,
    scroller,
  );
  onHash();

  // The log, live. EventSource reconnects by itself and sends the id of the
  // last event it got as Last-Event-ID, which the server resumes after (it
  // takes precedence over from_beginning): no chunk is lost or repeated.
  const source = new EventSource(`/jobs/${id}/stream?from_beginning=true`);
  let ended = false;
  let readyAt = null;
  source.onopen = () => {
    streamState.textContent = ended ? "" : "live";
  };
  source.onmessage = (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (data.type === "log") {
      const first = model.append(data.data);
      view.linesChanged(first);
      if (term) extendSearch(first);
      if (model.firstFailure >= 0) failureButton.disabled = false;
    } else if (data.type === "complete") {
      ended = true;
      source.close();
      streamState.textContent = "";
      // The whole log is on screen at the next frame: what the benchmark's
      // "interactive" time reads.
      requestAnimationFrame(() => {
        readyAt = performance.now();
      });
      refresh();
      showFailedTests();
    }
  };
  source.onerror = () => {
    if (ended) return;
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended, say): find out why.
      streamState.textContent = "stream stopped";
      refresh();
    } else {
      streamState.textContent = "reconnecting…";
    }
  };

  // Once the whole log is here: the failed tests, each linked to the line
  // where pytest reports it (see failureLines).
  const showFailedTests = async () => {
    let tests;
    try {
      tests = await api("GET", `/jobs/${id}/tests?outcome=failed,error,xpassed`);
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn("Your session ended; sign in again.");
      return;
    }
    const cases = (tests && tests.cases) || [];
    if (!cases.length) return;
    const lines = failureLines(model.lower, cases);
    const items = cases.map((c) => {
      const line = lines.get(c.id);
      const name =
        line === undefined
          ? el("span", { class: "test-id" }, c.id)
          : el("a", { href: `#L${line + 1}`, class: "test-id failed-test", "data-line": line + 1 }, c.id);
      const message = String(c.message || "").split("\n").find((l) => l.trim()) || "";
      return el(
        "li",
        { "data-test": c.id },
        el("span", { class: "outcome" }, c.outcome),
        name,
        c.new_failure ? el("span", { class: "tag" }, "new") : null,
        c.flaky ? el("span", { class: "tag" }, "flaky") : null,
        message ? el("span", { class: "message" }, message) : null,
      );
    });
    failedTests.replaceChildren(el("h2", {}, `Failed tests (${cases.length})`), el("ul", {}, ...items));
    failedTests.hidden = false;
  };

  let timer = 0;
  let stopped = false;
  const refresh = async () => {
    try {
      job = await api("GET", `/jobs/${id}`);
      renderSummary();
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn("Your session ended; sign in again.");
    }
  };
  const poll = async () => {
    if (job.status === "completed" || job.status === "cancelled") return;
    await refresh();
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  timer = setTimeout(poll, POLL_MS);

  // Hooks for the browser tests and the benchmark: read what the page holds.
  window.ciJobPage = {
    lines: () => model.raw.slice(),
    lineCount: () => model.length,
    following: () => view.following,
    streamEnded: () => ended,
    /** ms after navigation when the ended job's whole log was rendered. */
    readyAt: () => readyAt,
  };
  stopView = () => {
    stopped = true;
    clearTimeout(timer);
    source.close();
    view.destroy();
    window.removeEventListener("hashchange", onHash);
  };
}

async function route() {
  stopView();
  stopView = () => {};
  const job = /^\/jobs\/([0-9a-fA-F-]{36})$/.exec(location.pathname);
  try {
    if (job) await showJob(job[1]);
    else await showList();
  } catch (e) {
    if (e instanceof SignedOut) showSignIn();
    else main.replaceChildren(el("p", { class: "error" }, String(e.message || e)));
  }
}

route();
