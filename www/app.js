// Shows the response headers of the current page, so a reader can see X-Cache at work.
"use strict";

async function showHeaders() {
  const out = document.getElementById("headers");
  if (!out) {
    return;
  }
  try {
    const response = await fetch(location.pathname, { method: "HEAD", cache: "no-store" });
    const lines = [`HTTP ${response.status} ${response.statusText}`];
    response.headers.forEach((value, name) => lines.push(`${name}: ${value}`));
    out.textContent = lines.join("\n");
  } catch (err) {
    out.textContent = `could not fetch the headers: ${err}`;
  }
}

document.addEventListener("DOMContentLoaded", showHeaders);
