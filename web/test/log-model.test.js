// The log model on its own: lines from chunks split anywhere, colour carried
// across lines, search over every line, the first failure.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LogModel } from "../src/log-model.js";

test("chunks split anywhere make the same lines", () => {
  const m = new LogModel();
  for (const chunk of ["a\nb", "c", "", "\n", "d\n"]) m.append(chunk);
  assert.deepEqual(m.raw, ["a", "bc", "d"]);
  assert.equal(m.open, false);
  m.append("e");
  assert.deepEqual(m.raw, ["a", "bc", "d", "e"]);
  assert.equal(m.open, true);
});

test("a colour opened on one line is carried into the next", () => {
  const m = new LogModel();
  m.append("\x1b[31mred\nstill\x1b[0m\nplain\n\x1b[1;32mgreen\x1b[0m\n");
  assert.equal(m.renderable(1), "\x1b[31mstill\x1b[0m");
  assert.equal(m.renderable(2), "plain");
  assert.equal(m.renderable(3), "\x1b[1;32mgreen\x1b[0m");
});

test("search looks at every line, without escape sequences, ignoring case", () => {
  const m = new LogModel();
  m.append("\x1b[31mRED\x1b[0m red\nblue\nred\n");
  assert.deepEqual(m.search("red"), { lines: [0, 2], count: 3 });
  assert.deepEqual(m.search("31m"), { lines: [], count: 0 });
  assert.deepEqual(m.search(""), { lines: [], count: 0 });
  assert.deepEqual(m.search("red", 1), { lines: [2], count: 1 });
});

test("the first failure is pytest's first failure line", () => {
  const m = new LogModel();
  m.append("collected 2 items\ntest_a.py::test_ok PASSED\n");
  assert.equal(m.firstFailure, -1);
  m.append("___ test_bad ___\nE   assert 1 == 2\nFAILED test_a.py::test_bad\n");
  assert.equal(m.firstFailure, 2);
});
