// Drives the Secrets page end to end in headless Chromium. Run by tests/it/web.rs, which starts
// the server, makes the users and checks what the page produced. Environment: SFS_URL,
// ALICE_TOKEN, BOB_TOKEN, ADMIN_TOKEN, JWKS, CANARY, SSH_KEY, OUT (a scratch directory), CHROMIUM, and optionally
// SCREENSHOTS (a directory outside the source tree).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env("SFS_URL");
const CANARY = env("CANARY");
const OUT = env("OUT");
const SHOTS = process.env.SCREENSHOTS || "";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();

// Everything the page received, and every complaint the browser made (a CSP violation is one).
const responses = [];
const pending = [];
page.on("response", (r) => {
  pending.push(
    r.text().then(
      (body) => responses.push({ url: r.url(), status: r.status(), body }),
      () => responses.push({ url: r.url(), status: r.status(), body: "" }),
    ),
  );
});
const complaints = [];
page.on("console", (m) => {
  // A failed request the test provokes on purpose (a 401, a 422) is logged as an error too;
  // only CSP and script errors count.
  if (m.type() === "error" && !/Failed to load resource/.test(m.text())) complaints.push(m.text());
});
page.on("pageerror", (e) => complaints.push(String(e)));

const step = (name) => console.log(`step: ${name}`);
const row = (name) => page.locator(`#rows tr[data-name="${name}"]`);
const notice = () => page.locator("#notice");

async function signIn(token) {
  await page.fill("#token", token);
  await page.click('#sign-in-form button[type="submit"]');
  await page.locator("#secrets").waitFor({ state: "visible" });
}

async function noCanaryInPage(where) {
  const found = await page.evaluate((canary) => {
    const hits = [];
    if (document.documentElement.outerHTML.includes(canary)) hits.push("DOM");
    for (const input of document.querySelectorAll("input, textarea")) {
      if (input.value.includes(canary)) hits.push(`input #${input.id}`);
    }
    for (const store of [sessionStorage, localStorage]) {
      for (let i = 0; i < store.length; i++) {
        const k = store.key(i);
        if (k.includes(canary) || (store.getItem(k) || "").includes(canary)) hits.push(`storage ${k}`);
      }
    }
    if (document.cookie.includes(canary)) hits.push("cookie");
    return hits;
  }, CANARY);
  assert.deepEqual(found, [], `the canary is in the page (${where})`);
}

// ---------------------------------------------------------------------------------------------
step("sign in: a bad token is refused next to the field");
await page.goto(URL_);
assert.equal(await page.title(), "Secrets · secretfs");
await page.fill("#token", "sfs_u_nottoken_nottoken");
await page.click('#sign-in-form button[type="submit"]');
await page.locator("#token-error").filter({ hasText: "not valid" }).waitFor();
assert.equal(await page.locator("#secrets").isVisible(), false);

step("sign in as alice");
await signIn(env("ALICE_TOKEN"));
assert.match(await page.locator("#who-name").textContent(), /^alice/);
assert.equal(await page.evaluate(() => window.location.href.includes("sfs_")), false, "token in the URL");

step("the add dialog is keyboard-usable");
await page.click("#add");
assert.equal(await page.evaluate(() => document.activeElement.id), "add-kind");
await page.keyboard.press("Escape");
assert.equal(await page.locator("#add-dialog").isVisible(), false);

async function add(kind, name, value, opts = {}) {
  await page.click("#add");
  await page.selectOption("#add-kind", kind);
  if (opts.suggested !== undefined) {
    assert.equal(await page.inputValue("#add-name"), opts.suggested, `${kind} suggests its name`);
  }
  if (name !== null) await page.fill("#add-name", name);
  assert.equal(await page.getAttribute("#add-value", "type"), "password");
  assert.equal(await page.isChecked('input[name="add-visibility"][value="private"]'), true);
  await page.fill("#add-value", value);
  if (opts.tags) await page.fill("#add-tags", opts.tags);
  await page.click("#add-submit");
  // The value field is cleared as soon as the request leaves.
  assert.equal(await page.inputValue("#add-value"), "");
}

step("errors appear next to the field they concern");
await add("ssh-public-key", null, "this is not an ssh key", { suggested: "SSH_PUBLIC_KEY" });
await page.locator("#add-value-error").filter({ hasText: /ssh|SSH|public key/ }).waitFor();
assert.equal(await page.locator("#add-dialog").isVisible(), true);
await page.keyboard.press("Escape");
await add("custom", "bad name!", "x", { suggested: "" });
await page.locator("#add-name-error").filter({ hasText: /name/ }).waitFor();
await page.keyboard.press("Escape");

step("one secret from each template");
const values = {
  SSH_PUBLIC_KEY: ["ssh-public-key", env("SSH_KEY")],
  GITHUB_TOKEN: ["github", "ghp_0123456789abcdefghijABCDEFGHIJ012345"],
  HF_TOKEN: ["huggingface", "hf_abcdefghijklmnopqrstuvwxyz0123456789"],
  OPENAI_API_KEY: ["openai", "not-an-openai-key"],
  DD_API_KEY: ["datadog", "0123456789abcdef0123456789abcdef"],
  NGC_API_KEY: ["ngc", "nvapi-0123456789abcdefghijklmnopqrstuvwxyz"],
};
for (const [name, [kind, value]] of Object.entries(values)) {
  await add(kind, null, value, { suggested: name });
  await notice().filter({ hasText: `Added ${name}` }).waitFor();
  if (kind === "openai") {
    // A token that does not look like the provider's is stored, with a warning.
    assert.match(await notice().textContent(), /does not match the OpenAI API key format/);
  }
}
await add("custom", "DB_PASSWORD", CANARY, { suggested: "", tags: "prod, db" });
await notice().filter({ hasText: "Added DB_PASSWORD" }).waitFor();
await noCanaryInPage("after adding");

step("they are listed, with no value");
const names = [...Object.keys(values), "DB_PASSWORD"].sort();
const listed = await page.locator("#rows tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.name));
assert.deepEqual(listed, names);
for (const name of names) {
  const text = await row(name).textContent();
  assert.match(text, /Private/);
  assert.match(text, /alice/);
}
assert.match(await row("DB_PASSWORD").textContent(), /prod, db/);
assert.match(await row("HF_TOKEN").textContent(), /Hugging Face token/);

step("replace a value (write-only)");
await page.click('[data-replace="DB_PASSWORD"]');
assert.equal(await page.evaluate(() => document.activeElement.id), "replace-value");
assert.equal(await page.inputValue("#replace-value"), "");
await page.fill("#replace-value", `${CANARY}-2`);
await page.click('#replace-form button[type="submit"]');
await notice().filter({ hasText: "now version 2" }).waitFor();
assert.match(await row("DB_PASSWORD").locator('td[data-label="Version"]').textContent(), /^2$/);
assert.equal(await page.inputValue("#replace-value"), "");

step("switch visibility");
await page.click('[data-visibility="HF_TOKEN"]');
await row("HF_TOKEN").locator(".badge.public").waitFor();

step("filters: text, owner and visibility");
await page.fill("#filter-text", "token");
assert.deepEqual(
  await page.locator("#rows tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.name)),
  ["GITHUB_TOKEN", "HF_TOKEN"],
);
await page.selectOption("#filter-visibility", "public");
assert.deepEqual(
  await page.locator("#rows tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.name)),
  ["HF_TOKEN"],
);
await page.fill("#filter-owner", "bob");
assert.equal(await page.locator("#rows tr").count(), 0);
assert.equal(await page.locator("#empty").isVisible(), true);
await page.fill("#filter-text", "");
await page.fill("#filter-owner", "");
await page.selectOption("#filter-visibility", "");
assert.equal(await page.locator("#rows tr").count(), names.length);

step("delete, with a confirmation naming the secret");
await page.click('[data-delete="OPENAI_API_KEY"]');
assert.match(await page.locator("#delete-question").textContent(), /"OPENAI_API_KEY"/);
await page.keyboard.press("Escape");
assert.equal(await row("OPENAI_API_KEY").count(), 1, "cancel keeps the secret");
await page.click('[data-delete="OPENAI_API_KEY"]');
await page.click("#delete-confirm");
await notice().filter({ hasText: "Deleted OPENAI_API_KEY" }).waitFor();
assert.equal(await row("OPENAI_API_KEY").count(), 0);

step("mint a workload token for two secrets");
assert.equal(await page.isDisabled("#mint"), true);
await row("DB_PASSWORD").locator('input[type="checkbox"]').check();
await row("HF_TOKEN").locator('input[type="checkbox"]').check();
await page.click("#mint");
await page.locator("#token-dialog").waitFor({ state: "visible" });
const token = await page.inputValue("#token-value");
assert.match(token, /^sfs_w_/);
fs.writeFileSync(path.join(OUT, "job.token"), token, { mode: 0o600 });
const run = await page.locator("#token-run").textContent();
assert.match(run, /secretfs run --url http:\/\/127\.0\.0\.1:\d+ --token-file job\.token/);
assert.match(run, /-s DB_PASSWORD -s HF_TOKEN -- python3 app\.py/);
assert.match(await page.locator("#token-mount").textContent(), /secretfs mount \/run\/secrets --url/);
const spec = await page.locator("#token-spec").textContent();
assert.match(spec, /\[secrets\]\nDB_PASSWORD = "DB_PASSWORD"\nHF_TOKEN = "HF_TOKEN"/);
fs.writeFileSync(path.join(OUT, "job.toml"), spec);
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(URL_).origin });
await page.click("#token-copy");
await page.locator("#token-copied").filter({ hasText: "Copied" }).waitFor();
assert.equal(await page.evaluate(() => navigator.clipboard.readText()), token);
if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "token-dialog.png") });
await page.click('#token-form button[type="submit"]');
await page.locator("#token-dialog").waitFor({ state: "hidden" });
assert.equal(await page.inputValue("#token-value"), "", "the token stays in the page after its dialog");
assert.equal(
  await page.evaluate((t) => document.documentElement.outerHTML.includes(t), token),
  false,
);
await noCanaryInPage("after minting");
assert.equal(await page.isVisible("#identity"), false, "a user who is no admin sees no identity bindings");
assert.equal(await page.isVisible("#audit"), false, "a user who is no admin sees no audit");

step("screenshots, wide and narrow");
if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "secrets-page.png"), fullPage: true });
await page.setViewportSize({ width: 380, height: 800 });
assert.equal(
  await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1),
  true,
  "the page scrolls sideways on a narrow window",
);
if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "secrets-page-narrow.png"), fullPage: true });
await page.setViewportSize({ width: 1280, height: 900 });

step("sign out forgets the token");
await page.click("#sign-out");
await page.locator("#sign-in").waitFor({ state: "visible" });
assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
assert.equal(await page.locator("#rows tr").count(), 0);

step("bob does not see alice's private secret");
await signIn(env("BOB_TOKEN"));
await row("HF_TOKEN").waitFor();
const bobSees = await page.locator("#rows tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.name));
assert.deepEqual(bobSees, ["HF_TOKEN"]);
assert.equal(
  await row("HF_TOKEN").locator("[data-replace]").count(),
  0,
  `bob may not change alice's secret: ${await page.locator("#who-name").textContent()} ${await row("HF_TOKEN").innerHTML()}`,
);
await noCanaryInPage("as bob");

step("an admin trusts a platform's tokens for selected secrets, and removes a binding");
await page.click("#sign-out");
await page.locator("#sign-in").waitFor({ state: "visible" });
await signIn(env("ADMIN_TOKEN"));
await page.locator("#identity").waitFor({ state: "visible" });
assert.equal(await page.isVisible("#bindings-empty"), true);
const bind = async (name, subject, claims) => {
  await page.fill("#bind-name", name);
  await page.fill("#bind-issuer", "https://oidc.example-cluster.test");
  await page.fill("#bind-subject", subject);
  await page.fill("#bind-claims", claims);
  await page.fill("#bind-jwks", env("JWKS"));
  await page.click("#bind");
};
await page.click("#bind");
await page.locator("#bind-error").filter({ hasText: "select the secrets" }).waitFor();
await row("HF_TOKEN").locator('input[type="checkbox"]').check();
await bind("everyone", "*", "");
await page.locator("#bind-error").filter({ hasText: "admits every token of the issuer" }).waitFor();
await bind("lepton-jobs", "system:serviceaccount:ws-abc:default", "kubernetes.io.namespace=ws-abc\nkubernetes.io.pod.name=train-*");
await notice().filter({ hasText: "Added the identity binding lepton-jobs" }).waitFor();
const binding = page.locator('#binding-rows tr[data-binding="lepton-jobs"]');
assert.match(await binding.textContent(), /system:serviceaccount:ws-abc:default · kubernetes\.io\.namespace=ws-abc · kubernetes\.io\.pod\.name=train-\*/);
assert.match(await binding.textContent(), /HF_TOKEN/);
assert.equal(await page.inputValue("#bind-jwks"), "", "the form is cleared after adding");
await bind("short-lived", "system:serviceaccount:ws-abc:builder", "");
await page.locator('#binding-rows tr[data-binding="short-lived"]').waitFor();
await page.click('[data-unbind="short-lived"]');
await page.locator("#unbind-dialog").waitFor({ state: "visible" });
await page.click("#unbind-confirm");
await notice().filter({ hasText: "Removed the identity binding short-lived" }).waitFor();
assert.equal(await page.locator('#binding-rows tr[data-binding="short-lived"]').count(), 0);
if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "identity-bindings.png"), fullPage: true });

step("an admin sees the audit, a coalesced record with its count and its first and last times");
await page.locator("#audit").waitFor({ state: "visible" });
const counted = page.locator("#audit-rows tr", { hasText: "×42" });
await counted.waitFor();
const countedText = await counted.textContent();
assert.match(countedText, /workload:planted/);
assert.match(countedText, /read/);
assert.match(countedText, /\d{2}:\d{2}:\d{2}Z – \d{4}-/, "a coalesced record shows its first and last times");
// The records of this session's own changes are there too, newest first, once refreshed.
await page.click("#audit-refresh");
await page.locator("#audit-rows tr td:nth-child(3)", { hasText: "identity-remove" }).first().waitFor();
const actions = await page.locator("#audit-rows tr td:nth-child(3)").allTextContents();
assert.equal(actions[0], "identity-remove", `audit actions: ${actions}`);
assert.ok(actions.includes("identity-add"), `audit actions: ${actions}`);
if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "audit.png"), fullPage: true });

step("nothing the page received holds the canary");
await Promise.all(pending);
assert.ok(responses.length > 10, `only ${responses.length} responses seen`);
for (const r of responses) {
  assert.equal(r.url.includes("/api/v1/workload/"), false, `the page called ${r.url}`);
  assert.equal(r.body.includes(CANARY), false, `the canary is in the response of ${r.url}`);
}
assert.deepEqual(complaints, [], "the browser reported errors");

await browser.close();
fs.writeFileSync(path.join(OUT, "result.json"), JSON.stringify({ ok: true, responses: responses.length }));
console.log(`ok: ${responses.length} responses checked`);
