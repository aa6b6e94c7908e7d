// capgate console: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  // A <select data-autosubmit> moves the wizard on as soon as a choice is made.
  function autosubmit() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
      el.addEventListener("change", function () {
        if (el.value && el.form) el.form.submit();
      });
    });
  }

  // Copy buttons: <button data-copy="ELEMENT-ID">, hidden until the clipboard is usable.
  function copyButtons() {
    if (!navigator.clipboard) return;
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target) return;
      button.hidden = false;
      var label = button.textContent;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(target.textContent).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 1500);
        });
      });
    });
  }

  // Client-side filter of a table's rows ([data-filter-for] names the table).
  function tableFilter() {
    document.querySelectorAll("[data-filter-for]").forEach(function (bar) {
      var table = document.getElementById(bar.getAttribute("data-filter-for"));
      var input = bar.querySelector("[data-filter-input]");
      if (!table || !input) return;
      bar.hidden = false;
      input.addEventListener("input", function () {
        var needle = input.value.trim().toLowerCase();
        table.querySelectorAll("tbody tr").forEach(function (row) {
          row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) === -1;
        });
      });
    });
  }

  // Decisions: the filters apply as you type, and new rows arrive by polling /v1/decisions.
  function decisions() {
    var table = document.querySelector("table[data-decisions]");
    var form = document.querySelector("form[data-decision-filters]");
    if (!table || !form) return;
    var body = table.tBodies[0];
    var status = document.querySelector("[data-live-status]");
    var cursor = table.getAttribute("data-next") || "";
    var fields = {
      decision: form.elements.namedItem("decision"),
      capability: form.elements.namedItem("capability"),
      host: form.elements.namedItem("host")
    };

    function matches(d) {
      var want = fields.decision.value;
      var cap = fields.capability.value.trim().toLowerCase();
      var host = fields.host.value.trim().toLowerCase();
      if (want && d.decision !== want) return false;
      if (cap && (d.capability || "").toLowerCase().indexOf(cap) === -1) return false;
      if (host && (d.host || "").toLowerCase().indexOf(host) === -1) return false;
      return true;
    }

    function refilter() {
      Array.prototype.forEach.call(body.rows, function (row) {
        row.hidden = !matches({
          decision: row.getAttribute("data-decision"),
          capability: row.getAttribute("data-capability"),
          host: row.getAttribute("data-host")
        });
      });
    }

    function cell(row, text, cls) {
      var td = row.insertCell(-1);
      if (cls) td.className = cls;
      td.textContent = text;
      return td;
    }

    function addRow(d) {
      var row = body.insertRow(0);
      row.className = "fresh";
      row.setAttribute("data-decision", d.decision || "");
      row.setAttribute("data-capability", d.capability || "");
      row.setAttribute("data-host", d.host || "");
      row.setAttribute("data-id", String(d.id));
      var when = new Date(d.at * 1000);
      var td = cell(row, "just now");
      td.title = when.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
      var badgeCell = row.insertCell(-1);
      var badge = document.createElement("span");
      badge.className = "badge badge-" + (d.decision === "allow" ? "allow" : "deny");
      badge.textContent = d.decision;
      badgeCell.appendChild(badge);
      cell(row, d.capability || "\u2014");
      var req = row.insertCell(-1);
      var code = document.createElement("code");
      code.textContent = (d.method || "") + " " + (d.host || "") + (d.path || "");
      req.appendChild(code);
      cell(row, d.upstream_status ? String(d.upstream_status) : "");
      cell(row, d.reason || "", "muted");
      row.hidden = !matches(d);
      var empty = document.querySelector("[data-empty]");
      if (empty) empty.hidden = true;
    }

    function poll() {
      var url = "/v1/decisions?limit=200" + (cursor ? "&after=" + encodeURIComponent(cursor) : "");
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
        .then(function (page) {
          page.decisions.forEach(addRow);
          if (page.next) cursor = page.next;
          table.setAttribute("data-next", cursor);
          if (status) status.textContent = "Live";
        })
        .catch(function () { if (status) status.textContent = "Live updates paused"; })
        .then(function () { setTimeout(poll, 2000); });
    }

    ["input", "change"].forEach(function (type) { form.addEventListener(type, refilter); });
    if (status) status.textContent = "Live";
    setTimeout(poll, 2000);
  }

  ready(function () {
    autosubmit();
    copyButtons();
    tableFilter();
    decisions();
  });
})();
