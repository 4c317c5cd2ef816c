"""End to end: the report of the trained e2e workflow, opened in headless Chromium.

The workflow (conftest `trained`: runs `lora` and `full`) has no Stage-A or Stage-B outputs, and running
them on two models trained for three steps would add minutes. So, as tests/test_e2e_stage_b.py does,
the test writes one mission's Stage-A file from the demo's ground-truth summaries (Stage-B's input
contract) and runs a small Stage-B eval on it with `--allowed-rules stage_b_eval`; `report.stage_a` is
off (that file did not come from Stage-A's merge, so there are no Stage-A stats), and the Stage-A plot
is covered by tests/test_plot_stage_b.py. Then Snakemake builds the plots of both training runs, the
Stage-B plots and the headline, and `snakemake --report` writes the page.

In Chromium (Debian's chromium and chromium-driver, driven by selenium) the test opens every result of
the report through its own view button and checks that each image loads (naturalWidth > 0) in full
(no pixel left transparent: a truncated PNG still reports its size), and that the headline page shows
the serving run's eval loss and the mission's false-pass rate as text.
Screenshots of the headline and of one plot are left beside the report (results/report_*.png).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from support.ground_truth import ground_truth_records
from workflow_env import snakemake

from vlqc.jsonl import read_json, read_jsonl, write_jsonl
from vlqc.report import figure

pytestmark = pytest.mark.e2e

MISSION = "挡风板安装检查"
RUN = "e2e_report"
RUNS = ("lora", "full")
OVERLAY = f"""
report: {{missions: [{MISSION}], stage_a: false, stage_b_run: {RUN}}}
stage_b: {{eval_grid: [{{temperature: 0.1, max_new_tokens: 32}}], cpu_ranks: 1}}
"""
TRAINING_PLOTS = [
    f"results/plots/train/{run}/{p}.png" for run in RUNS for p in ("loss", "eval_loss_buckets", "ablation")
]
STAGE_B_PLOTS = [f"results/plots/stage_b/{MISSION}/eval/{RUN}/{p}.png" for p in ("confusion", "metrics", "outcomes")]
STAGE_B_PLOTS.append(f"results/plots/stage_b/eval/{RUN}/false_pass.png")
HEADLINE = "results/plots/headline.html"
PLOT_RULES = (
    "plot_loss",
    "plot_eval_buckets",
    "plot_ablation",
    "plot_stage_b_confusion",
    "plot_stage_b_metrics",
    "plot_stage_b_outcomes",
    "plot_stage_b_false_pass",
    "report_headline",
)
# The flags that work on this machine's Chromium: no GPU, no network beyond the file, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


@pytest.fixture(scope="module")
def report(trained) -> Path:
    """The trained workflow with its report written: results/report.html."""
    (trained / "report.yaml").write_text(OVERLAY, encoding="utf-8")
    configs = ("--configfile", "e2e.yaml", "report.yaml")
    snakemake(trained, *configs, "--", *TRAINING_PLOTS)
    samples = read_jsonl(trained / "results/data/demo/all_samples.jsonl", schema="sample")
    write_jsonl(trained / f"results/{MISSION}_stage_a.jsonl", ground_truth_records(samples, MISSION), "stage_a_group")
    snakemake(
        trained,
        *configs,
        "--allowed-rules",
        "stage_b_eval",
        "--",
        f"results/stage_b/{MISSION}/eval/{RUN}/verdicts.jsonl",
    )
    # The Stage-A file stands as input: no rule may rebuild it.
    only_plots = ("--allowed-rules", *PLOT_RULES)
    targets = (*TRAINING_PLOTS, *STAGE_B_PLOTS, HEADLINE)
    snakemake(trained, *configs, *only_plots, "--", *targets)
    snakemake(trained, *configs, *only_plots, "--report", "results/report.html", "--", *targets)
    return trained / "results/report.html"


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def open_report(driver, path: Path) -> list[str]:
    """Load the report and wait for its app; returns the paths of its results."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    loaded = "return typeof app !== 'undefined' && document.querySelector('#loading-screen').style.display === 'none'"
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(loaded))
    return driver.execute_script("return Object.keys(results)")


def view(driver, result: str) -> str:
    """Show a result's panel and press its view button, as a reader does; returns the result's MIME type."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("app.showResultInfo(arguments[0])", result)
    button = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, 'a[iconname="eye"]'))
    button.click()
    return driver.execute_script("return results[arguments[0]].mime_type", result)


def image_width(driver, result: str) -> int | None:
    """naturalWidth of the result's image once the page shows it and it has loaded (0: broken)."""
    from selenium.webdriver.support.ui import WebDriverWait

    shown = (
        "const img = Array.from(document.images).find(i => i.src === results[arguments[0]].data_uri);"
        " return img && img.complete ? img.naturalWidth : null"
    )
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(shown, result) is not None)
    return driver.execute_script(shown, result)


def transparent_pixels(driver, result: str) -> int:
    """Pixels of the shown image that the browser drew transparent. A plot is opaque all over, so any
    is a part that did not decode (a truncated PNG still reports its full size)."""
    return driver.execute_script(
        "const img = Array.from(document.images).find(i => i.src === results[arguments[0]].data_uri);"
        " const canvas = document.createElement('canvas');"
        " canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;"
        " const context = canvas.getContext('2d'); context.drawImage(img, 0, 0);"
        " const data = context.getImageData(0, 0, canvas.width, canvas.height).data;"
        " let clear = 0; for (let i = 3; i < data.length; i += 4) { if (data[i] < 255) clear++; } return clear;",
        result,
    )


def frame_text(driver) -> str:
    """The text of the HTML result shown in the content frame."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frame = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "iframe"))
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "table"))
        return driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.switch_to.default_content()


def test_every_plot_and_the_headline_are_in_the_report(report, browser):
    results = open_report(browser, report)
    assert sorted(results) == sorted([*TRAINING_PLOTS, *STAGE_B_PLOTS, HEADLINE])
    for result in results:
        mime = view(browser, result)
        if mime == "image/png":
            assert image_width(browser, result) > 0, f"{result} does not load"
            assert transparent_pixels(browser, result) == 0, f"{result} loads only in part"
        else:
            assert mime == "text/html" and result == HEADLINE
        if result == STAGE_B_PLOTS[0]:
            browser.save_screenshot(str(report.parent / "report_plot.png"))


def test_headline_numbers_appear_as_text(report, browser):
    from selenium.webdriver.common.by import By

    doc = read_json(report.parent / "plots/headline.json", schema="report_headline")
    lora = next(row for row in doc["runs"] if row["run"] == "lora")
    [mission] = doc["stage_b"]["missions"]
    assert mission["false_pass_rate"] is not None  # the demo tickets of a mission include failed ones
    open_report(browser, report)
    assert view(browser, HEADLINE) == "text/html"
    page = frame_text(browser)
    eval_loss, false_pass = figure.loss(lora["eval_loss"]), figure.percent(mission["false_pass_rate"])
    assert f"lora (serving) {lora['step']} {eval_loss}" in page
    assert f"{MISSION} {false_pass}" in page
    assert f"full {next(r['step'] for r in doc['runs'] if r['run'] == 'full')}" in page
    # The entry's labels repeat them beside the result, outside the frame.
    panel = browser.find_element(By.TAG_NAME, "body").text
    assert eval_loss in panel and false_pass in panel
    browser.save_screenshot(str(report.parent / "report_headline.png"))
