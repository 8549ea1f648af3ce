// livedm's page: the Users tab (admins): roles, the permission, tokens, removing a user. Uses app.js's helpers.
"use strict";

async function loadUsers() {
  const users = await rpc("list_users");
  $("#users tbody").replaceChildren(...users.map((user) => el("tr", { dataset: { user: user.name } },
    el("td", {}, user.name),
    el("td", {}, el("select", {
      "aria-label": `role of ${user.name}`,
      onchange: (event) => guarded(async () => {
        try {
          await rpc("set_user_role", { user: user.name, role: event.target.value });
          toast(`${user.name} is ${event.target.value === "admin" ? "an admin" : "a user"}`);
        } finally { await loadUsers(); }
      }),
    }, ["admin", "user"].map((role) => el("option", { value: role, selected: role === user.role }, role)))),
    el("td", {}, el("label", {}, el("input", {
      type: "checkbox", checked: user.live_data_management, "aria-label": `live data management for ${user.name}`,
      onchange: (event) => guarded(async () => {
        await rpc("set_user_data_management_permission", { user: user.name, enabled: event.target.checked });
        toast(`${user.name} ${event.target.checked ? "may" : "may not"} change live data`);
        await loadUsers();
      }),
    }), user.live_data_management ? " allowed" : " not allowed")),
    el("td", {}, shortTime(user.created_at)),
    el("td", { class: "user-actions" },
      el("button", { type: "button", onclick: () => guarded(async () => showToken(await rpc("issue_token", { user: user.name }))) },
        "Issue token"),
      el("button", { type: "button", onclick: () => guarded(async () => {
        const { revoked } = await rpc("revoke_token", { user: user.name });
        toast(`revoked ${revoked} token(s) of ${user.name}`);
      }) }, "Revoke tokens"),
      user.name === state.me.name ? null
        : el("button", { type: "button", class: "danger", onclick: () => removeUser(user) }, "Remove…")))));
}

async function removeUser(user) {
  const confirmed = await ask({
    title: `Remove ${user.name}?`,
    body: [el("p", {}, `${user.name} (${user.role}) and all of their tokens go; the audit log keeps the name.`)],
    okLabel: "Remove", danger: true, confirmText: user.name,
  });
  if (!confirmed) return;
  await guarded(async () => {
    const { tokens_revoked: revoked } = await rpc("remove_user", { user: user.name });
    toast(`removed ${user.name} (${revoked} token(s) revoked)`);
    await loadUsers();
  });
}

function showToken({ user, name, token }) {
  return ask({ title: `API token for ${user || name}`, okLabel: "Close",
    body: [el("p", {}, "Shown this once: give it to them now."), el("code", { id: "new-token" }, token)] });
}

