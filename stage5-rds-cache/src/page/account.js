// Stage 5's account panel: sign up, log in, read the profile, log out.
// Every call goes through shop.api, so the request log shows each answer's
// X-Data-Path: reading the profile twice shows the cache miss, then the hit.
"use strict";
(() => {
  const $ = shop.$;
  async function showAccount() {
    const { status, data } = await shop.api("GET", "/api/me");
    const signedIn = status === 200;
    $("#auth").hidden = signedIn;
    $("#signed-in").hidden = !signedIn;
    $("#who").textContent = signedIn
      ? `Logged in as ${data.name} (${data.email})`
      : "Not logged in: your cart is anonymous.";
  }
  $("#auth").addEventListener("submit", async (event) => {
    event.preventDefault();
    const act = event.submitter && event.submitter.dataset.act;
    const body = { email: $("#email").value, password: $("#password").value };
    if (act === "signup") body.name = $("#name").value;
    const { status, data } = await shop.api("POST", act === "signup" ? "/api/signup" : "/api/login", body);
    if (status === 200 || status === 201) {
      $("#password").value = "";
      shop.showNotices([], false);
      await showAccount();
      shop.refreshCart();
    } else if (status !== 0) {
      // 422 names the field at fault; 401 and 409 say what went wrong.
      shop.showNotices([data.message || `HTTP ${status}`], true);
    }
  });
  $("#profile").addEventListener("click", showAccount);
  // Logging out ends the session: stage 4's DELETE /api/session.
  $("#logout").addEventListener("click", async () => {
    await shop.api("DELETE", "/api/session");
    await showAccount();
    shop.refreshCart();
  });
  showAccount();
})();
