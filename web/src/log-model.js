// The job's log as lines, built from the stream's chunks. Kept apart from the
// DOM so that search and "first failure" look at every line, not only the
// few on screen.

// SGR (colour) sequences; other escape sequences are dropped from the plain text.
const ESCAPE = /\x1b\[[0-9;?]*[A-Za-z]/g;
const SGR = /\x1b\[([0-9;]*)m/g;

// What pytest and pip print where a run goes wrong.
const FAILURE = /^(FAILED |ERROR |E {3})|^_{3,} .* _{3,}$|Traceback \(most recent call last\)|^=+ .*\b(failed|error|errors)\b.* =+$/;

export class LogModel {
  constructor() {
    /** The lines as printed, colour sequences included. */
    this.raw = [];
    /** The same lines without escape sequences, lower-cased, for search. */
    this.lower = [];
    /**
     * Colour state carried into a line from the lines before it (sparse: only
     * lines that start coloured), so any line renders correctly on its own.
     */
    this.carry = new Map();
    this.openSgr = "";
    /** Whether the last line is still open (its newline not yet printed). */
    this.open = false;
    this.firstFailure = -1;
  }

  get length() {
    return this.raw.length;
  }

  /** Adds a chunk of output; returns the index of the first line it touched. */
  append(chunk) {
    const first = this.open ? this.raw.length - 1 : this.raw.length;
    if (chunk === "") return first;
    const parts = chunk.split("\n");
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1;
      if (last && parts[i] === "") {
        // The chunk ended with a newline: no line is open.
        this.open = false;
        break;
      }
      let index;
      if (i === 0 && this.open) {
        index = this.raw.length - 1;
        this.raw[index] += parts[0];
      } else {
        index = this.raw.length;
        if (this.openSgr) this.carry.set(index, this.openSgr);
        this.raw.push(parts[i]);
        this.lower.push("");
      }
      this.finishLine(index);
      if (last) this.open = true;
      else this.trackSgr(this.raw[index]);
    }
    return first;
  }

  finishLine(index) {
    const line = this.raw[index];
    const plain = line.indexOf("\x1b") >= 0 ? line.replace(ESCAPE, "") : line;
    this.lower[index] = plain.toLowerCase();
    if (this.firstFailure < 0 && FAILURE.test(plain)) this.firstFailure = index;
  }

  /** Follows the colour state across a finished line. */
  trackSgr(line) {
    if (line.indexOf("\x1b[") < 0) return;
    for (const m of line.matchAll(SGR)) {
      const params = m[1];
      if (params === "" || params === "0" || params.endsWith(";0") || params.startsWith("0;")) {
        this.openSgr = params.startsWith("0;") ? `\x1b[${params}m` : "";
      } else {
        this.openSgr += m[0];
      }
    }
  }

  /** Line text with the colour it starts in, for rendering on its own. */
  renderable(index) {
    const carry = this.carry.get(index);
    return carry ? carry + this.raw[index] : this.raw[index];
  }

  /**
   * Every line from `from` on that contains `term` (case-insensitive), and
   * the number of occurrences, over the whole log.
   */
  search(term, from = 0) {
    const needle = term.toLowerCase();
    const lines = [];
    let count = 0;
    if (!needle) return { lines, count };
    const lower = this.lower;
    for (let i = from; i < lower.length; i++) {
      let at = lower[i].indexOf(needle);
      if (at < 0) continue;
      lines.push(i);
      while (at >= 0) {
        count++;
        at = lower[i].indexOf(needle, at + needle.length);
      }
    }
    return { lines, count };
  }
}

// A section header of pytest's FAILURES / ERRORS: `____ test_x ____`.
const SECTION = /^_+ (.+?) _+$/;

/**
 * Where pytest reports each failed test in the log: for every case of
 * `cases` (`{id, outcome}`, as `GET /jobs/{id}/tests` gives them, in report
 * order) that can be found, its id mapped to the index of the line. That is
 * the header of the test's traceback section (`____ TestA.test_b ____`, or
 * `____ ERROR at setup of test_b ____` for an error), else its line in the
 * short test summary (`FAILED tests/test_x.py::TestA::test_b - …`). Headers
 * name a test without its file, so two failing tests of one name in two
 * files share a header: pytest prints the sections in the order the tests
 * ran, which is the report's order, so the k-th case of a name takes the
 * k-th header of that name. `lower` is the log's plain, lower-cased lines
 * (`LogModel.lower`); one pass over it, whatever the number of cases.
 */
export function failureLines(lower, cases) {
  const sections = new Map();
  const summaries = new Map();
  for (let i = 0; i < lower.length; i++) {
    const line = lower[i];
    if (line.startsWith("_")) {
      const m = SECTION.exec(line);
      if (!m) continue;
      if (!sections.has(m[1])) sections.set(m[1], []);
      sections.get(m[1]).push(i);
    } else if (line.startsWith("failed ") || line.startsWith("error ")) {
      const rest = line.slice(line.indexOf(" ") + 1);
      const end = rest.indexOf(" - ");
      const id = (end >= 0 ? rest.slice(0, end) : rest).trimEnd();
      if (!summaries.has(id)) summaries.set(id, i);
    }
  }
  const taken = new Map();
  const found = new Map();
  for (const c of cases) {
    const id = c.id.toLowerCase();
    const parts = id.split("::");
    const head = parts.length > 1 ? parts.slice(1).join(".") : id;
    const names = c.outcome === "error" ? [`error at setup of ${head}`, `error at teardown of ${head}`] : [head];
    let line = -1;
    for (const name of names) {
      const at = sections.get(name) || [];
      const k = taken.get(name) || 0;
      if (k < at.length) {
        line = at[k];
        taken.set(name, k + 1);
        break;
      }
    }
    if (line < 0 && summaries.has(id)) line = summaries.get(id);
    if (line >= 0) found.set(c.id, line);
  }
  return found;
}
