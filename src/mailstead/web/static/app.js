// mailstead webmail: a little vanilla JavaScript on top of server-rendered pages.
// Everything works without it; this adds shortcuts, live updates and the HTML editor.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  // -- message list: clickable rows, select all, cursor --
  function rows() { return $$("#message-table tr.message-row"); }
  let cursor = -1;
  function setCursor(i) {
    const all = rows();
    if (!all.length) return;
    cursor = Math.max(0, Math.min(all.length - 1, i));
    all.forEach((r, j) => r.classList.toggle("cursor", j === cursor));
    all[cursor].scrollIntoView({ block: "nearest" });
  }
  function bindList() {
    rows().forEach((row) => {
      row.addEventListener("click", (e) => {
        if (e.target.closest("a, input, button, label")) return;
        location.href = row.dataset.href;
      });
    });
    const all = $("#select-all");
    if (all) all.addEventListener("change", () => {
      $$("#message-table input[name=uid]").forEach((c) => { c.checked = all.checked; });
    });
  }
  function listAction(action) {
    const form = $("#list-form");
    if (!form) return false;
    const checked = $$("input[name=uid]:checked", form);
    if (!checked.length && cursor >= 0) {
      const box = $("input[name=uid]", rows()[cursor]);
      if (box) box.checked = true;
    }
    const button = $(`button[data-action=${action}]`, form);
    if (button) { button.click(); return true; }
    return false;
  }

  // -- forms: auto-submit selects, confirmations --
  $$("[data-autosubmit]").forEach((el) => el.addEventListener("change", () => el.form.submit()));
  document.addEventListener("click", (e) => {
    const el = e.target.closest("[data-confirm]");
    if (el && !window.confirm(el.dataset.confirm)) e.preventDefault();
  });

  // -- message body iframe: as tall as its content --
  const frame = $("iframe.message-body");
  if (frame) {
    const fit = () => {
      try {
        const doc = frame.contentDocument;
        if (doc && doc.documentElement) frame.style.height = (doc.documentElement.scrollHeight + 24) + "px";
      } catch (err) { /* not readable: keep the default height */ }
    };
    frame.addEventListener("load", () => { fit(); setTimeout(fit, 300); });
  }

  // -- compose: plain / HTML switch, toolbar, Ctrl+Enter --
  const compose = $("#compose-form");
  if (compose) {
    const editor = $("#editor");
    const text = $("#body-text");
    const html = $("#body-html");
    const escapeHtml = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    $$("input[name=format]", compose).forEach((radio) => radio.addEventListener("change", () => {
      const isHtml = $("#format-html").checked;
      $(".editor-html", compose).hidden = !isHtml;
      $(".editor-text", compose).hidden = isHtml;
      if (isHtml && !editor.textContent.trim()) editor.innerHTML = escapeHtml(text.value).replace(/\n/g, "<br>");
      if (!isHtml && !text.value.trim()) text.value = editor.innerText;
      (isHtml ? editor : text).focus();
    }));
    $$(".editor-toolbar [data-cmd]", compose).forEach((b) => b.addEventListener("click", () => {
      let value = b.dataset.value || null;
      if (b.dataset.cmd === "createLink") {
        value = window.prompt("Link address (https://…)");
        if (!value) return;
      }
      editor.focus();
      document.execCommand(b.dataset.cmd, false, value);
    }));
    compose.addEventListener("submit", () => { if ($("#format-html").checked) html.value = editor.innerHTML; });
    compose.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("#send").click(); }
    });
  }

  // -- keyboard shortcuts --
  const help = $("#shortcut-help");
  const view = $(".message-view");
  let pendingG = false;
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (help && !help.hidden) { help.hidden = true; return; }
      if (typing(e.target)) { e.target.blur(); return; }
      if (view) location.href = view.dataset.list;
      return;
    }
    if (typing(e.target)) return;
    const key = e.key;
    if (pendingG) {
      pendingG = false;
      if (key === "i") { const inbox = $("[data-inbox]"); if (inbox) location.href = inbox.href; }
      return;
    }
    const click = (sel) => { const el = $(sel); if (el) el.click(); return !!el; };
    let handled = true;
    switch (key) {
      case "?": if (help) help.hidden = !help.hidden; break;
      case "/": { const s = $("#search-input"); if (s) s.focus(); break; }
      case "c": location.href = "/compose"; break;
      case "g": pendingG = true; break;
      case "j":
        if (view) { if (view.dataset.older) location.href = view.dataset.older; } else setCursor(cursor + 1);
        break;
      case "k":
        if (view) { if (view.dataset.newer) location.href = view.dataset.newer; } else setCursor(cursor - 1);
        break;
      case "o": case "Enter":
        if (!view && cursor >= 0) location.href = rows()[cursor].dataset.href; else handled = false;
        break;
      case "x":
        if (!view && cursor >= 0) { const b = $("input[name=uid]", rows()[cursor]); b.checked = !b.checked; }
        break;
      case "r": handled = view ? click("#reply") : false; break;
      case "a": handled = view ? click("#reply-all") : false; break;
      case "f": handled = view ? click("#forward") : false; break;
      case "s": handled = view ? click("#message-actions [data-action=flag]") : listAction("flag"); break;
      case "u": handled = view ? click("#message-actions [data-action=unread]") : listAction("unread"); break;
      case "#": case "Delete": handled = view ? click("#message-actions [data-action=delete]") : listAction("delete"); break;
      case "!": handled = view ? click("#message-actions [data-action=junk]") : listAction("junk"); break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  });
  if (help) $("[data-close-help]", help).addEventListener("click", () => { help.hidden = true; });

  // -- new mail without reloading: server-sent events --
  const live = $("[data-live]");
  if (live && window.EventSource) {
    const source = new EventSource(live.dataset.live);
    source.addEventListener("change", async (event) => {
      const data = JSON.parse(event.data);
      let total = 0;
      Object.entries(data.unseen).forEach(([id, n]) => {
        const badge = $(`[data-unseen="${id}"]`);
        if (badge) { badge.textContent = n; badge.hidden = !n; }
        const link = $(`[data-folder="${id}"]`);
        if (link && link.hasAttribute("data-inbox")) total = n;
      });
      document.title = document.title.replace(/^\(\d+\) /, "");
      if (total) document.title = `(${total}) ${document.title}`;
      // Refresh the list itself unless the reader is in the middle of selecting.
      const list = $("#list");
      if (!list || $$("input[name=uid]:checked").length || typing(document.activeElement)) return;
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const newList = fresh.querySelector("#list");
      if (newList) { list.replaceWith(newList); cursor = -1; bindList(); }
    });
    window.addEventListener("beforeunload", () => source.close());
  }

  // -- admin: live statistics --
  const stats = $("[data-stats]");
  if (stats) {
    const duration = (s) => {
      const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
      return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
    };
    const fillTable = (body, entries, empty) => {
      body.replaceChildren();
      if (!entries.length) {
        const tr = document.createElement("tr"), td = document.createElement("td");
        td.colSpan = 2; td.className = "muted"; td.textContent = empty; tr.append(td); body.append(tr);
      }
      entries.forEach(([k, v]) => {
        const tr = document.createElement("tr");
        const a = document.createElement("td"), b = document.createElement("td");
        a.textContent = k; b.textContent = v; tr.append(a, b); body.append(tr);
      });
    };
    // The last spam verdicts: time, recipient, score, tests, action (textContent only).
    const fillVerdicts = (body, rows) => {
      body.replaceChildren();
      if (!rows.length) {
        const tr = document.createElement("tr"), td = document.createElement("td");
        td.colSpan = 5; td.className = "muted"; td.textContent = "No verdicts yet"; tr.append(td); body.append(tr);
      }
      rows.forEach((v) => {
        const tr = document.createElement("tr");
        tr.dataset.action = v.action;
        const cells = [v.at.slice(0, 19).replace("T", " "), v.recipient, v.score.toFixed(1)];
        cells.forEach((text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); });
        const tests = document.createElement("td"), code = document.createElement("code");
        code.textContent = v.tests.join(", ") || "none"; tests.append(code);
        const action = document.createElement("td"), tag = document.createElement("span");
        tag.className = `tag spam-${v.action}`; tag.textContent = v.action; action.append(tag);
        tr.append(tests, action); body.append(tr);
      });
    };
    $$("[data-format=duration]").forEach((el) => { el.textContent = duration(+el.textContent); });
    const refresh = async () => {
      const response = await fetch(stats.dataset.stats, { credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      $$("[data-stat]").forEach((el) => {
        const value = data[el.dataset.stat];
        el.textContent = el.dataset.format === "duration" ? duration(value) : value;
      });
      $$("[data-stat-table]").forEach((body) => {
        const entries = Object.entries(data[body.dataset.statTable] || {});
        fillTable(body, entries, body.dataset.statTable === "spam_verdicts" ? "No verdicts yet" : "None");
      });
      $$("[data-stat-rows]").forEach((body) => fillVerdicts(body, data[body.dataset.statRows] || []));
    };
    setInterval(refresh, 3000);
  }

  bindList();
  document.body.dataset.js = "ready";  // tests (and curious readers) can tell the script ran
})();
