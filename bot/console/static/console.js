// gridbot console: the phone menu and sortable tables.  No framework, no external requests.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var toggle = document.querySelector(".nav-toggle");
  var nav = document.getElementById("nav");
  if (toggle && nav) {
    toggle.addEventListener("click", function () {
      var open = nav.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  // Tables with class "sortable": a click on a th[data-sort] ("num" or "text") sorts the rows
  // by each cell's data-value; a second click reverses.
  function sortBy(table, index, kind, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var descending = th.getAttribute("aria-sort") === "ascending";
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute("data-value") || a.cells[index].textContent;
      var y = b.cells[index].getAttribute("data-value") || b.cells[index].textContent;
      var order = kind === "num" ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, "zh-CN");
      return descending ? -order : order;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (cell) {
      cell.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      var kind = th.getAttribute("data-sort");
      if (!kind) { return; }
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, index, kind, th); });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(table, index, kind, th); }
      });
    });
  });
})();
