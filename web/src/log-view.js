// The log on screen: only the lines in view (plus a margin) exist in the DOM,
// so a 100 000-line log costs what 100 lines cost. Rows have one fixed height
// (lines do not wrap), so nothing is ever measured.

import { AnsiUp } from "ansi_up";
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
} from "@tanstack/virtual-core";

export const ROW_PX = 18;

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}
/** Rendered lines kept as HTML; beyond this the cache starts over. */
const HTML_CACHE_LINES = 5000;

export class LogView {
  /**
   * @param {HTMLElement} scroller the element that scrolls (fixed height)
   * @param {import("./log-model.js").LogModel} model
   * @param {(following: boolean) => void} onFollowChange
   */
  constructor(scroller, model, onFollowChange) {
    this.el = scroller;
    this.model = model;
    this.onFollowChange = onFollowChange;
    this.rows = document.createElement("div");
    this.rows.className = "rows";
    this.el.append(this.rows);
    this.ansi = new AnsiUp();
    this.html = new Map();
    this.following = true;
    this.lastTop = 0;
    this.highlight = -1;
    this.pendingLine = -1;
    this.matches = new Set();
    this.current = -1;
    this.version = 0;
    this.renderedKey = "";
    this.syncQueued = false;
    this.options = {
      count: 0,
      getScrollElement: () => this.el,
      estimateSize: () => ROW_PX,
      scrollToFn: elementScroll,
      observeElementRect,
      observeElementOffset,
      overscan: 12,
      onChange: () => this.render(),
    };
    this.virtualizer = new Virtualizer(this.options);
    this.unmount = this.virtualizer._didMount();
    this.virtualizer._willUpdate();
    this.el.addEventListener("scroll", () => this.scrolled(), { passive: true });
  }

  destroy() {
    this.unmount();
  }

  /** Lines from `firstTouched` on are new or changed; shown at the next frame. */
  linesChanged(firstTouched) {
    this.html.delete(firstTouched);
    this.version++;
    if (this.syncQueued) return;
    this.syncQueued = true;
    requestAnimationFrame(() => {
      this.syncQueued = false;
      this.sync();
    });
  }

  sync() {
    this.options.count = this.model.length;
    this.virtualizer.setOptions(this.options);
    this.rows.style.height = `${this.virtualizer.getTotalSize()}px`;
    if (this.pendingLine >= 0 && this.pendingLine < this.model.length) {
      const line = this.pendingLine;
      this.pendingLine = -1;
      this.scrollToLine(line);
    } else if (this.following) {
      this.el.scrollTop = this.el.scrollHeight;
      this.lastTop = this.el.scrollTop;
    }
    this.render();
  }

  /** Follow mode ends when the user scrolls up, and starts again at the bottom. */
  scrolled() {
    const top = this.el.scrollTop;
    const atBottom = top + this.el.clientHeight >= this.el.scrollHeight - ROW_PX;
    if (atBottom) this.setFollowing(true);
    else if (top < this.lastTop) this.setFollowing(false);
    this.lastTop = top;
  }

  setFollowing(on) {
    if (on === this.following) return;
    this.following = on;
    if (on) {
      this.el.scrollTop = this.el.scrollHeight;
      this.lastTop = this.el.scrollTop;
    }
    this.onFollowChange(on);
  }

  /** Scrolls line `index` (0-based) to the middle of the view, now or once it exists. */
  scrollToLine(index) {
    this.setFollowing(false);
    if (index >= this.model.length) {
      this.pendingLine = index;
      return;
    }
    this.virtualizer.scrollToIndex(index, { align: "center" });
    this.lastTop = this.el.scrollTop;
    this.version++;
    this.render();
  }

  /** The line of a `#L123` link: highlighted and scrolled to. */
  setHighlight(index) {
    this.highlight = index;
    this.scrollToLine(index);
  }

  setMatches(lines, current) {
    this.matches = new Set(lines);
    this.current = current;
    this.version++;
    this.render();
  }

  /** The first line on screen (0-based). */
  topLine() {
    return Math.floor(this.el.scrollTop / ROW_PX);
  }

  lineHtml(index) {
    let html = this.html.get(index);
    if (html === undefined) {
      const text = this.model.renderable(index);
      // Most lines have no escape sequence: escaping is all they need. The
      // others start from a reset, so each converts on its own, in any order.
      html = text.indexOf("\x1b") < 0 ? escapeHtml(text) : this.ansi.ansi_to_html(`\x1b[0m${text}`);
      if (this.html.size >= HTML_CACHE_LINES) this.html.clear();
      this.html.set(index, html);
    }
    return html;
  }

  render() {
    const items = this.virtualizer.getVirtualItems();
    if (items.length === 0) {
      this.rows.textContent = "";
      this.renderedKey = "";
      return;
    }
    const key = `${items[0].index}:${items[items.length - 1].index}:${this.version}`;
    if (key === this.renderedKey) return;
    this.renderedKey = key;
    let out = "";
    for (const item of items) {
      const i = item.index;
      let cls = "row";
      if (i === this.highlight) cls += " highlight";
      if (this.matches.has(i)) cls += i === this.current ? " match current" : " match";
      const n = i + 1;
      out += `<div class="${cls}" style="top:${item.start}px" data-line="${n}"><a class="ln" href="#L${n}">${n}</a><span class="tx">${this.lineHtml(i)}</span></div>`;
    }
    this.rows.innerHTML = out;
  }
}
