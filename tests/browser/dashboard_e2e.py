#!/usr/bin/python3
"""Drives the Tracevisor dashboard in headless Chromium (Debian's chromium, chromium-driver and
python3-selenium) as an operator would, against a real coordinator that the Rust test
`tests/tests/dashboard.rs` started with a token, a real local agent and a real session daemon.

The harness and this script talk over stdin/stdout: a line `HARNESS <command>` asks the Rust
side to act on the world (start the instrumented program, stop an agent), which answers `ok`.
Every step prints `STEP <name>`; a failure raises with what the page showed. Screenshots of
every page go to --out.

Modes:
  e2e    the end-to-end scenario (the default)
  bench  loads the fleet page once and prints the bytes transferred and the time until the
         fleet table is interactive, as JSON (used by bench-dashboard)
"""

import argparse
import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def log(*args):
    print(*args, flush=True)


def harness(command):
    """Asks the Rust side to do something outside the browser and waits for its `ok`."""
    log(f"HARNESS {command}")
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise RuntimeError(f"harness could not {command}: {answer!r}")


def make_driver(user_data):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        f"--user-data-dir={user_data}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Network.enable", {})
    return driver


class Session:
    def __init__(self, driver, base, out):
        self.d = driver
        self.base = base.rstrip("/")
        self.out = out
        self.console = []
        self.requests = []
        self.shots = []
        # Failed loads the scenario provokes on purpose show in Chromium's console as
        # network errors: these (status, path fragment) pairs are the only ones allowed.
        self.expected_failures = []

    # -- waiting ------------------------------------------------------------------------
    def wait(self, what, predicate, timeout=30):
        try:
            # Live pages redraw rows under the script's feet: a stale element is looked up again.
            return WebDriverWait(
                self.d, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
            ).until(lambda d: predicate())
        except TimeoutException:
            self.shot(f"timeout-{what}")
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; page text:\n"
                + self.d.find_element(By.TAG_NAME, "body").text[:3000]
            )

    def find(self, css):
        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def visible(self, css):
        el = self.find(css)
        return el if el is not None and el.is_displayed() else None

    def text(self, css):
        el = self.find(css)
        return el.text.strip() if el is not None else None

    def wait_visible(self, css, timeout=30):
        return self.wait(css, lambda: self.visible(css), timeout)

    def wait_text(self, css, predicate, timeout=30, what=None):
        def check():
            t = self.text(css)
            return t if t is not None and predicate(t) else None

        return self.wait(what or css, check, timeout)

    def click(self, css):
        for attempt in range(5):
            try:
                el = self.wait_visible(css)
                self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
                el.click()
                return
            except StaleElementReferenceException:
                if attempt == 4:
                    raise

    def fill(self, css, value):
        for attempt in range(5):
            try:
                el = self.wait_visible(css)
                el.clear()
                el.send_keys(value)
                return
            except StaleElementReferenceException:
                if attempt == 4:
                    raise

    def go(self, route):
        self.d.get(f"{self.base}/#/{route}")

    def nav(self, name):
        self.click(f'a[data-nav="{name}"]')

    def shot(self, name):
        path = os.path.join(self.out, f"{len(self.shots) + 1:02d}-{name}.png")
        self.d.save_screenshot(path)
        self.shots.append(path)
        log(f"SCREENSHOT {path}")

    def collect_logs(self):
        self.console.extend(self.d.get_log("browser"))
        for entry in self.d.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                params = message["params"]
                # Requests made by the dashboard's pages (not the browser's own new-tab page).
                if params.get("documentURL", "").startswith(self.base):
                    self.requests.append(params["request"]["url"])

    def no_alert(self):
        try:
            alert = self.d.switch_to.alert
            text = alert.text
            alert.dismiss()
            raise AssertionError(f"a JavaScript alert opened: {text!r} (script injection)")
        except NoAlertPresentException:
            pass

    def job_id(self):
        view = self.wait_visible("#job-view")
        job_id = view.get_attribute("data-job-id")
        assert job_id, "the job page names its job"
        return job_id


def step(name):
    log(f"STEP {name}")


def e2e(s, token, hostile):
    d = s.d
    # ---------------------------------------------------------------- sign in
    step("sign-in page")
    d.get(s.base + "/")
    s.wait_visible("#signin-form")
    s.shot("signin")
    s.fill("#signin-token", "not-the-token-not-the-token")
    s.expected_failures.append((401, "/ui/session"))
    s.click('#signin-form button[type="submit"], #signin-form input[type="submit"]')
    s.wait_text("#signin-error", lambda t: len(t) > 0, what="the wrong token's error")
    assert s.visible("#signin-form"), "still on the sign-in page after a wrong token"
    s.fill("#signin-token", token)
    s.click('#signin-form button[type="submit"], #signin-form input[type="submit"]')
    step("fleet")
    s.wait_text(
        'tr[data-host="localhost"] td[data-col="agent"]',
        lambda t: t == "connected",
        what="the local agent connected in the fleet",
    )
    cookies = {c["name"]: c for c in d.get_cookies()}
    session = cookies.get("tracevisor_session")
    assert session, f"a session cookie after sign-in: {cookies}"
    assert session.get("httpOnly") is True, session
    assert session.get("sameSite") == "Strict", session
    assert d.execute_script("return document.cookie") == "", "the session cookie is not readable by scripts"

    # A hostile host's markup is shown as text, never run.
    step("hostile host data is text")
    s.fill("#fleet-search", hostile["hostname"])
    s.wait_text(
        f'tr[data-host="{hostile["hostname"]}"]',
        lambda t: hostile["version"] in t,
        what="the hostile host's version shown as text",
    )
    s.no_alert()
    assert not s.find("img[src='x']"), "the hostile version became an element"
    s.fill("#fleet-search", "")

    # Live: web-2 is connected, then its agent stops and the row turns disconnected.
    step("fleet live updates")
    s.wait_text('tr[data-host="web-2"] td[data-col="agent"]', lambda t: t == "connected")
    s.shot("fleet")
    harness("agent-stop web-2")
    s.wait_text(
        'tr[data-host="web-2"] td[data-col="agent"]',
        lambda t: t == "disconnected",
        timeout=30,
        what="web-2 shown disconnected without a reload",
    )
    # Sort and filter keep working.
    s.click('th[data-sort="hostname"]')
    s.click('th[data-sort="hostname"]')
    Select(s.wait_visible("#fleet-state")).select_by_value("disconnected")
    # The hostile host left after its hello: it is disconnected too.
    s.wait(
        "only the disconnected hosts listed",
        lambda: sorted(r.get_attribute("data-host") for r in d.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr[data-host]"))
        == ["evil-1", "web-2"],
    )
    Select(s.wait_visible("#fleet-state")).select_by_value("all")

    # ---------------------------------------------------------------- registry
    step("registry: add, reject, edit, delete a relay")
    s.nav("registry")
    s.click('button[data-kind="relays"]')
    s.wait_visible("#registry-form")
    s.fill('#registry-form input[name="hostname"]', "bad host")
    s.expected_failures.append((422, "/relays"))
    s.click("#registry-save")
    s.wait_text(
        '.field-error[data-field="hostname"]',
        lambda t: "hostname" in t or "character" in t,
        what="the rejected hostname's error next to its field",
    )
    s.shot("registry-rejected")
    s.fill('#registry-form input[name="hostname"]', "relay-ui-1")
    s.fill('#registry-form input[name="ipv4"]', "192.0.2.7")
    s.click("#registry-save")
    row = s.wait(
        "the new relay's row",
        lambda: next(
            (r for r in d.find_elements(By.CSS_SELECTOR, "#registry-table tbody tr[data-id]") if "relay-ui-1" in r.text),
            None,
        ),
    )
    relay_id = row.get_attribute("data-id")
    assert not (s.text('.field-error[data-field="hostname"]') or ""), "the field error is cleared"
    s.click(f'#registry-table tr[data-id="{relay_id}"] button.edit')
    s.fill('#registry-form input[name="ipv4"]', "192.0.2.8")
    s.click("#registry-save")
    s.wait_text(f'#registry-table tr[data-id="{relay_id}"]', lambda t: "192.0.2.8" in t, what="the edited relay")
    s.shot("registry")
    s.click(f'#registry-table tr[data-id="{relay_id}"] button.delete')
    s.click(f'#registry-table tr[data-id="{relay_id}"] button.confirm-delete')
    s.wait("the deleted relay gone", lambda: s.find(f'#registry-table tr[data-id="{relay_id}"]') is None)

    # ---------------------------------------------------------------- a ust trace
    step("ust trace with live progress to a result table")
    harness("ust-app-start")
    s.nav("trace")
    s.wait_visible("#trace-form")
    s.wait("the analysis types", lambda: len(Select(s.find("#trace-type")).options) >= 5)
    Select(s.find("#trace-type")).select_by_value("ust")
    s.wait_text("#trace-type-description", lambda t: len(t) > 0, what="the analysis description")
    s.fill("#trace-hosts", "localhost")
    s.fill("#trace-duration", "4")
    s.shot("trace-form")
    s.click("#trace-start")
    job = s.job_id()
    progress = s.wait(
        "the progress bar moving",
        lambda: (lambda v: v if v and 0 < float(v) < 1 else None)(
            s.find("#job-progress").get_attribute("value") if s.find("#job-progress") else None
        ),
        timeout=20,
    )
    log(f"progress seen: {progress}")
    s.shot("job-running")
    s.wait_text("#job-status", lambda t: t == "complete", timeout=60, what=f"job {job} complete")
    s.wait("a result table", lambda: s.find("#job-result table.result-table"), timeout=10)
    result_text = s.text("#job-result")
    assert "tracevisor_test" in result_text, f"the program's events in the result:\n{result_text[:2000]}"
    assert s.find("#job-result .chart canvas"), "a chart of the events"
    assert s.find("#job-result button.csv-export"), "a CSV export per table"
    s.shot("job-ust-result")

    # ---------------------------------------------------------------- LAMI tables and charts
    step("LAMI result: tables with titles, time range and units, sortable, a chart, CSV")
    s.nav("trace")
    Select(s.wait_visible("#trace-type")).select_by_value("cpu-synthetic")
    s.wait_text("#trace-type-description", lambda t: "generated kernel trace" in t)
    s.fill("#trace-hosts", "localhost")
    s.fill("#trace-duration", "1")
    s.click("#trace-start")
    job = s.job_id()
    s.wait_text("#job-status", lambda t: t == "complete", timeout=60, what=f"LAMI job {job} complete")
    s.wait("the LAMI tables", lambda: len(d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table")) >= 3)
    captions = [c.text.strip() for c in d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table caption")]
    assert all(captions), f"every table has a title: {captions}"
    ranges = [r.text.strip() for r in d.find_elements(By.CSS_SELECTOR, "#job-result .time-range")]
    assert ranges and all(ranges), f"every table shows its time range: {ranges}"
    # The generated trace: `worker` (tid 1234) ran 60 % of the second, `logger` (1300) 20 %.
    table = next(
        t for t in d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table") if "worker" in t.text
    )
    assert "60" in table.text and "%" in table.text, f"the CPU share as a percentage:\n{table.text}"
    # A process named as markup by the traced host shows as text, in the table and the chart.
    assert hostile["comm"] in table.text, f"the hostile process name as text:\n{table.text}"
    assert not d.find_elements(By.CSS_SELECTOR, "#job-result b"), "the process name became an element"
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    before = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    # The first click may sort the way the table already is: two clicks give both orders.
    headers[-1].click()
    time.sleep(0.3)
    def worker_rows():
        return [r.text for r in next(
            t for t in d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table") if "worker" in t.text
        ).find_elements(By.CSS_SELECTOR, "tbody tr")]
    if worker_rows() == before:
        next(t for t in d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table") if "worker" in t.text).find_elements(By.CSS_SELECTOR, "thead th")[-1].click()
    s.wait(
        "the table sorted by its last column",
        lambda: [r.text for r in next(
            t for t in d.find_elements(By.CSS_SELECTOR, "#job-result table.result-table") if "worker" in t.text
        ).find_elements(By.CSS_SELECTOR, "tbody tr")] != before,
        timeout=10,
    )
    assert s.find("#job-result .chart canvas"), "a chart of the CPU share"
    assert s.find("#job-result button.csv-export"), "CSV export"
    s.shot("job-lami-result")

    # ---------------------------------------------------------------- cancel
    step("cancel a running job")
    s.nav("trace")
    Select(s.wait_visible("#trace-type")).select_by_value("ust")
    s.fill("#trace-hosts", "localhost")
    s.fill("#trace-duration", "60")
    s.click("#trace-start")
    s.job_id()
    s.wait_text("#job-status", lambda t: t == "trace running", timeout=30)
    s.click("#job-cancel")
    s.wait_text("#job-status", lambda t: t == "failed", timeout=60, what="the cancelled job ended")
    s.wait_text("#job-error", lambda t: "cancel" in t.lower(), what="the cancellation in the error")
    s.shot("job-cancelled")

    # ---------------------------------------------------------------- fleet job
    step("fleet job with an offline host, hosts picked in the fleet")
    s.nav("fleet")
    s.wait_visible('tr[data-host="localhost"]')
    for host in ("localhost", "web-2"):
        box = s.wait_visible(f'tr[data-host="{host}"] input.select-host')
        if not box.is_selected():
            box.click()
    s.click("#fleet-trace-selected")
    s.wait_visible("#trace-form")
    hosts = s.find("#trace-hosts").get_attribute("value")
    assert "localhost" in hosts and "web-2" in hosts, f"the selection carried to the trace form: {hosts!r}"
    Select(s.wait_visible("#trace-type")).select_by_value("ust")
    s.fill("#trace-duration", "1")
    s.click("#trace-start")
    s.job_id()
    s.wait_text('#fleet-outcomes tr[data-host="localhost"] td[data-col="outcome"]', lambda t: t == "complete", timeout=60)
    s.wait_text('#fleet-outcomes tr[data-host="web-2"] td[data-col="outcome"]', lambda t: t == "offline", timeout=60)
    assert s.find('#fleet-outcomes tr[data-host="localhost"] a.host-result'), "a link to the host's own result"
    s.shot("job-fleet")
    s.click('#fleet-outcomes tr[data-host="localhost"] a.host-result')
    s.wait_text("#job-status", lambda t: t == "complete", what="the fleet host's own job page")

    # ---------------------------------------------------------------- kernel analysis
    step("io on a host without the kernel tracer")
    s.nav("trace")
    Select(s.wait_visible("#trace-type")).select_by_value("io")
    s.fill("#trace-hosts", "localhost")
    s.fill("#trace-duration", "1")
    s.click("#trace-start")
    s.job_id()
    s.wait_text("#job-status", lambda t: t == "failed", timeout=30)
    s.wait_text("#job-error", lambda t: "kernel tracer" in t, what="the kernel tracer's error")
    assert s.text("#job-error .error-step") == "kernel", s.text("#job-error")
    s.shot("job-io-error")

    # ---------------------------------------------------------------- jobs, status
    step("jobs list")
    s.nav("jobs")
    s.wait("five jobs listed", lambda: len(d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr[data-job-id]")) >= 5)
    s.shot("jobs")
    step("status")
    s.nav("status")
    s.wait_text('dd[data-key="database"]', lambda t: t == "ok")
    s.wait_text('dd[data-key="agents_connected"]', lambda t: t.strip() != "")
    s.shot("status")

    # ---------------------------------------------------------------- sign out
    step("sign out")
    s.click("#signout")
    s.wait_visible("#signin-form")
    assert "tracevisor_session" not in {c["name"] for c in d.get_cookies()}, "the cookie is gone"
    d.get(s.base + "/#/fleet")
    s.wait_visible("#signin-form")
    s.collect_logs()


def check_logs(s):
    # Nothing left the origin.
    foreign = [u for u in s.requests if not (u.startswith(s.base + "/") or u == s.base or u.startswith("data:"))]
    assert not foreign, f"requests left the origin: {foreign}"
    assert len(s.requests) > 20, f"the dashboard's requests were recorded: {s.requests}"
    log(f"requests: {len(s.requests)}, all to {s.base}")
    # No console error or warning, except the failed loads provoked on purpose.
    bad = []
    for entry in s.console:
        if entry.get("level") not in ("SEVERE", "WARNING"):
            continue
        message = entry.get("message", "")
        if entry.get("source") == "network" and any(
            f"status of {status}" in message and fragment in message for status, fragment in s.expected_failures
        ):
            continue
        bad.append(entry)
    assert not bad, "console errors:\n" + "\n".join(json.dumps(e) for e in bad)
    log(f"console: {len(s.console)} entries, none unexpected")


def bench(s, expected_hosts):
    """One cold load of the fleet page: bytes on the wire and time to an interactive table."""
    d = s.d
    # A cold load each time: away from the page, cache emptied, then the fleet page anew.
    d.get("about:blank")
    d.execute_cdp_cmd("Network.clearBrowserCache", {})
    d.get_log("performance")
    d.get(s.base + "/#/fleet")
    s.wait("the fleet table", lambda: d.execute_script("return document.body.dataset.fleetReady") == "1", timeout=120)
    ready_ms = float(d.execute_script("return document.body.dataset.fleetReadyMs || 'NaN'"))
    shown = d.execute_script("return document.getElementById('fleet-count').textContent")
    # Interactive: a search narrows every row; timed from the page's own clock, it includes
    # the search box's 150 ms debounce.
    filter_ms = d.execute_script(
        """
        const input = document.getElementById('fleet-search');
        const t0 = performance.now();
        input.value = 'sim-00042';
        input.dispatchEvent(new Event('input', {bubbles: true}));
        return new Promise(resolve => {
            const check = () => {
                const rows = document.querySelectorAll('#fleet-table tbody tr[data-host]');
                if (rows.length > 0 && rows.length < 20) resolve(performance.now() - t0);
                else setTimeout(check, 5);
            };
            check();
        });
        """
    )
    sizes = {}
    urls = {}
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFinished":
            sizes[params["requestId"]] = params.get("encodedDataLength", 0)
    by_url = {urls.get(k, k): v for k, v in sizes.items()}
    clients = sum(v for u, v in by_url.items() if "/clients" in u and "/events" not in u)
    total = sum(by_url.values())
    print(
        "BENCH "
        + json.dumps(
            {
                "hosts": expected_hosts,
                "count_text": shown,
                "ready_ms": ready_ms,
                "filter_ms": filter_ms,
                "bytes_total": total,
                "bytes_clients": clients,
                "bytes_app": total - clients,
                "requests": {u.replace(s.base, ""): v for u, v in by_url.items()},
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["e2e", "bench"], default="e2e")
    parser.add_argument("--hostile-hostname", default="evil-1")
    parser.add_argument("--hostile-version", default="<img src=x onerror=alert(1)>")
    parser.add_argument("--hostile-comm", default="<b>logger</b>")
    parser.add_argument("--hosts", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tv-chromium-") as user_data:
        driver = make_driver(user_data)
        s = Session(driver, args.url, args.out)
        try:
            if args.mode == "bench":
                for _ in range(args.runs):
                    bench(s, args.hosts)
                s.shot("fleet-bench")
            else:
                e2e(
                    s,
                    args.token,
                    {"hostname": args.hostile_hostname, "version": args.hostile_version, "comm": args.hostile_comm},
                )
                check_logs(s)
                log("E2E PASSED")
        except Exception:
            try:
                s.collect_logs()
                for entry in s.console:
                    log(f"CONSOLE {json.dumps(entry)}")
                s.shot("failure")
            except Exception as e:  # the browser itself may be gone
                log(f"could not collect the browser's state: {e}")
            raise
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
