// The log model on its own: lines from chunks split anywhere, colour carried
// across lines, search over every line, the first failure.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LogModel, failureLines } from "../src/log-model.js";

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

test("each failed test is found at its traceback, else at its summary line", () => {
  const m = new LogModel();
  m.append(
    [
      "tests/test_a.py::test_bad FAILED",
      "=================================== ERRORS ===================================",
      "_____________________ ERROR at setup of test_needs_setup ______________________",
      "E   RuntimeError: no fixture",
      "================================== FAILURES ==================================",
      "__________________________________ test_bad __________________________________",
      "E   assert 1 == 2",
      "_____________________________ TestGroup.test_in[1] ____________________________",
      "__________________________________ test_bad __________________________________",
      "=========================== short test summary info ============================",
      "FAILED tests/test_a.py::test_bad - assert 1 == 2",
      "FAILED tests/test_c.py::test_no_section - [XPASS(strict)] fixed",
      "",
    ].join("\n"),
  );
  const cases = [
    { id: "tests/test_a.py::test_needs_setup", outcome: "error" },
    { id: "tests/test_a.py::test_bad", outcome: "failed" },
    { id: "tests/test_a.py::TestGroup::test_in[1]", outcome: "failed" },
    { id: "tests/test_b.py::test_bad", outcome: "failed" },
    { id: "tests/test_c.py::test_no_section", outcome: "xpassed" },
    { id: "tests/test_d.py::test_nowhere", outcome: "failed" },
  ];
  assert.deepEqual(
    [...failureLines(m.lower, cases)],
    [
      ["tests/test_a.py::test_needs_setup", 2],
      ["tests/test_a.py::test_bad", 5],
      ["tests/test_a.py::TestGroup::test_in[1]", 7],
      ["tests/test_b.py::test_bad", 8],
      ["tests/test_c.py::test_no_section", 11],
    ],
  );
});
