// The poster page's print button (a script file: the console's CSP allows no inline script).
document.addEventListener("click", (event) => {
  if (event.target.closest(".print-button")) window.print();
});
