// sagalease ui: refresh the dashboard in place (hand-written, no build, no dependencies).
// Every few seconds it fetches the page's own URL as JSON and updates the counts,
// the queue lag and the stale/failure tables. Values are set with textContent and
// setAttribute only, never as HTML.
(function () {
  "use strict";
  var body = document.body;
  var every = Number(body.getAttribute("data-refresh-seconds"));
  if (body.getAttribute("data-page") !== "dashboard" || !(every > 0)) {
    return;
  }

  function taskPath(id) {
    return "/tasks/" + encodeURIComponent(id);
  }

  function cell(text) {
    var td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function linkCell(id) {
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.className = "task-link";
    a.href = taskPath(id);
    var bdi = document.createElement("bdi");
    bdi.textContent = id;
    a.appendChild(bdi);
    td.appendChild(a);
    return td;
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) : "-";
  }

  function seconds(value) {
    if (value === null || value === undefined) { return "-"; }
    if (value < 60) { return value.toFixed(1) + " s"; }
    if (value < 3600) { return (value / 60).toFixed(1) + " min"; }
    return (value / 3600).toFixed(1) + " h";
  }

  function fillRows(table, rows, columns, build) {
    var tbody = table.tBodies[0];
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    if (rows.length === 0) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = cell("none");
      td.colSpan = columns;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(build(row)); });
  }

  function sameQueues(data) {
    var shown = Array.prototype.map.call(
      document.querySelectorAll("#queue-lag tbody tr[data-queue]"),
      function (tr) { return tr.getAttribute("data-queue"); });
    return shown.join("\u0000") === data.queues.join("\u0000");
  }

  function apply(data) {
    if (!sameQueues(data)) {  // a queue appeared or went: draw the page again
      window.location.reload();
      return;
    }
    document.querySelectorAll("#counts td[data-state][data-queue]").forEach(function (td) {
      var perQueue = data.counts[td.getAttribute("data-queue")] || {};
      td.textContent = String(perQueue[td.getAttribute("data-state")] || 0);
    });
    document.querySelectorAll("#counts [data-total-state]").forEach(function (td) {
      td.textContent = String(data.totals[td.getAttribute("data-total-state")] || 0);
    });
    var total = document.getElementById("total-tasks");
    if (total) {
      total.textContent = String(data.total);
      total.setAttribute("data-total", String(data.total));
    }
    document.querySelectorAll("#queue-lag tr[data-queue]").forEach(function (tr) {
      var q = tr.getAttribute("data-queue");
      var lag = data.queue_lag_seconds[q];
      tr.setAttribute("data-lag-seconds", lag === null || lag === undefined ? "" : String(lag));
      tr.setAttribute("data-stale", String(data.stale_leases[q] || 0));
      tr.querySelector(".lag").textContent = seconds(lag);
      tr.querySelector(".stale-count").textContent = String(data.stale_leases[q] || 0);
    });
    var stale = document.getElementById("stale");
    if (stale) {
      stale.setAttribute("data-count", String(data.stale_count));
      document.querySelectorAll(".count[data-count]").forEach(function (span) {
        span.textContent = String(data.stale_count);
        span.setAttribute("data-count", String(data.stale_count));
      });
      fillRows(stale, data.stale, 6, function (t) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-task-id", t.task_id);
        [linkCell(t.task_id), cell(t.queue), cell(t.state), cell(t.owner || "-"),
          cell(String(t.token)), cell(when(t.expires_at))].forEach(function (td) {
          tr.appendChild(td);
        });
        return tr;
      });
    }
    var failures = document.getElementById("recent-failures");
    if (failures) {
      fillRows(failures, data.failures, 6, function (t) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-task-id", t.task_id);
        tr.setAttribute("data-state", t.state);
        tr.setAttribute("data-owed", String(t.owed.length));
        var owed = t.owed.map(function (c) { return c.kind + " \u2192 " + c.target; });
        [linkCell(t.task_id), cell(t.queue), cell(t.state), cell(t.terminal_reason || "-"),
          cell(owed.length ? owed.join(", ") : "-"), cell(when(t.updated_at))].forEach(
          function (td) { tr.appendChild(td); });
        return tr;
      });
    }
    var asOf = document.getElementById("as-of");
    if (asOf) {
      asOf.setAttribute("data-now", data.now);
      asOf.textContent = "as of " + when(data.now) + " UTC";
    }
    body.setAttribute("data-refreshed", data.now);
  }

  function refresh() {
    fetch(window.location.href, {headers: {"Accept": "application/json"}, cache: "no-store"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) { apply(data); body.removeAttribute("data-refresh-error"); })
      .catch(function (error) { body.setAttribute("data-refresh-error", String(error)); })
      .then(function () { window.setTimeout(refresh, every * 1000); });
  }

  window.setTimeout(refresh, every * 1000);
})();
