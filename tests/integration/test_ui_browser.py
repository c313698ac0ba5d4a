"""The people page in a real browser: Chromium (Debian's chromium + chromium-driver) driven by Selenium.

A store is made by `faces run --folder-labels` over a few LFW people (four with six
photos, two with two, one alone; `cluster.min_identity_size: 3`, so the pairs and the
lone face stay unknown), `faces ui` serves it as a real server process, and the browser
signs in and uses every action. Then `faces run --full-recluster` must keep a merge of
two different people and a "not this person" decision that the clustering alone would
undo. Set FACES_UI_SCREENSHOTS=<folder> to save the screenshots shown in the README.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.identities import IdentityStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LFW = ROOT / "data" / "lfw" / "images_deepfunneled"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "browser-test-key-5678"
WAIT_S = 20
# Four people of six photos, two pairs and a lone face (the first such LFW folders, by name).
PEOPLE = ["Albert_Costa", "Angela_Bassett", "Arminio_Fraga", "Billy_Crystal"]
PAIRS = ["Aaron_Sorkin", "Abdel_Nasser_Assidi"]
ALONE = ["AJ_Cook"]

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs Debian's chromium and chromium-driver (`make setup` installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once the browser is known to exist)
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def faces_cli(*args: str, params: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACES_PARAMS": str(params), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "components.cli", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"faces {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Return once the server answers its health check; fail at once if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"faces ui exited with {process.returncode}: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)  # the next probe; bounded by the deadline
    raise AssertionError(f"faces ui did not answer {url}/healthz within {timeout_s} s")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    photos = base / "photos"
    for person in PEOPLE + PAIRS + ALONE:
        (photos / person).mkdir(parents=True)
        for photo in sorted((LFW / person).glob("*.jpg"))[:6]:
            shutil.copy(photo, photos / person / photo.name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["models_dir"] = str(ROOT / "models")
    params["detect"]["batch_size"] = 8
    params["cluster"]["min_identity_size"] = 3  # the pairs stay in the unknown pool, for the unknown-faces page
    (base / "params.yaml").write_text(yaml.safe_dump(params))
    out = base / "out"
    faces_cli("run", "--input", str(photos), "--out", str(out), "--folder-labels", "--no-progress",
              params=base / "params.yaml")
    url = f"sqlite:///{out / 'faces.db'}"
    port = free_port()
    env = {**os.environ, "FACES_PARAMS": str(base / "params.yaml"), "FACES_API_KEY": KEY}
    env.pop("FACES_UI_PASSWORD", None)
    server = subprocess.Popen([sys.executable, "-m", "components.cli", "ui", "--db", url, "--port", str(port)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(address, server)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,860",
                         "--disable-gpu", "--force-device-scale-factor=1"):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield {"base": base, "photos": photos, "out": out, "url": url, "address": address, "browser": browser,
                   "params": base / "params.yaml", "store": IdentityStore(url)}
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- helpers -----------------------------------------------------------------------------------------


def go(world, path: str) -> None:
    world["browser"].get(world["address"] + path)
    WebDriverWait(world["browser"], WAIT_S).until(EC.presence_of_element_located((By.TAG_NAME, "main")))


def submit(world, element) -> None:
    """Click a submit button and wait until the next page has replaced this one and finished loading."""
    browser = world["browser"]
    browser.execute_script("window.beforeSubmit = true;")  # gone once a new document is loaded

    def next_page_loaded(_) -> bool:
        try:
            return browser.execute_script("return window.beforeSubmit === undefined && document.readyState === 'complete'")
        except WebDriverException:  # asked while the browser was between two documents
            return False

    element.click()
    WebDriverWait(browser, WAIT_S).until(next_page_loaded)


def sign_in(world, secret: str = KEY) -> None:
    browser = world["browser"]
    go(world, "/login")
    if browser.find_elements(By.ID, "sign-out"):
        return
    browser.find_element(By.ID, "secret").send_keys(secret)
    submit(world, browser.find_element(By.ID, "sign-in"))


def flash(world) -> str:
    found = world["browser"].find_elements(By.ID, "flash")
    return found[0].text if found else ""


def who(world) -> dict[str, int]:
    """LFW name -> identity id holding most of that person's faces (the store's labels are the folder names)."""
    votes: dict[str, dict[int, int]] = {}
    for identity in world["store"].identities():
        for face in identity["faces"]:
            if face["label"]:
                votes.setdefault(face["label"], {}).setdefault(identity["id"], 0)
                votes[face["label"]][identity["id"]] += 1
    return {name: max(counts, key=counts.get) for name, counts in votes.items()}


def faces_of(world, identity: int) -> set[int]:
    return {face for face, owner in world["store"].identity_of_faces().items() if owner == identity}


def screenshot(world, name: str) -> None:
    folder = os.environ.get("FACES_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        world["browser"].save_screenshot(str(Path(folder) / name))


# -- the tests, in the order a user meets the page ------------------------------------------------------


def test_nothing_without_signing_in_and_a_wrong_secret_is_refused(world):
    browser = world["browser"]
    browser.delete_all_cookies()
    go(world, "/people/1")
    assert browser.current_url.startswith(world["address"] + "/login")
    with urllib.request.urlopen(world["address"] + "/faces/1/photo.jpg", timeout=5) as answer:  # no session, no photo
        assert answer.geturl().startswith(world["address"] + "/login")
        assert answer.headers["content-type"].startswith("text/html")
    browser.find_element(By.ID, "secret").send_keys("not the key")
    submit(world, browser.find_element(By.ID, "sign-in"))
    assert "neither the API key nor the password" in browser.find_element(By.ID, "login-error").text
    browser.find_element(By.ID, "secret").send_keys(KEY)
    submit(world, browser.find_element(By.ID, "sign-in"))
    assert browser.current_url == world["address"] + "/people/1"
    cookie = browser.get_cookie("faces_ui_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_people_page_lists_sorts_searches_and_renames(world):
    sign_in(world)
    browser = world["browser"]
    names = who(world)
    go(world, "/")
    cards = browser.find_elements(By.CSS_SELECTOR, "li.person")
    assert len(cards) == len(PEOPLE), [card.text for card in cards]
    assert all(card.find_element(By.TAG_NAME, "img").get_property("naturalWidth") == 112 for card in cards)
    screenshot(world, "people_page.png")
    person = names[PEOPLE[1]]
    go(world, f"/people/{person}")
    field = browser.find_element(By.ID, "new-name")
    field.clear()
    field.send_keys("Angela B.")
    submit(world, browser.find_element(By.ID, "rename"))
    assert "renamed" in flash(world) and "Angela B." in browser.find_element(By.ID, "person-name").text
    go(world, "/")
    browser.find_element(By.ID, "search").send_keys("angela")
    submit(world, browser.find_element(By.ID, "search-go"))
    assert [card.get_attribute("data-id") for card in browser.find_elements(By.CSS_SELECTOR, "li.person")] == [str(person)]
    go(world, "/?sort=name")
    assert browser.find_elements(By.CSS_SELECTOR, "li.person a.name")[0].text == "Angela B."


def test_a_forged_form_without_the_csrf_token_is_refused(world):
    sign_in(world)
    browser = world["browser"]
    person = who(world)[PEOPLE[2]]
    go(world, f"/people/{person}")
    # The page's own rename form, its token removed: what another site's forged form would send.
    browser.execute_script("document.querySelector('form[action$=\"/rename\"] input[name=csrf]').remove();")
    field = browser.find_element(By.ID, "new-name")
    field.clear()
    field.send_keys("Mallory")
    submit(world, browser.find_element(By.ID, "rename"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "403"
    assert "CSRF" in browser.find_element(By.ID, "error-message").text
    assert {row["id"]: row["name"] for row in world["store"].identity_list()}[person] is None


def test_person_page_orders_faces_and_opens_the_photo_with_its_box(world):
    sign_in(world)
    browser = world["browser"]
    person = who(world)[PEOPLE[0]]
    go(world, f"/people/{person}")
    shown = [float(label.text) for label in browser.find_elements(By.CSS_SELECTOR, "li.face label")]
    assert len(shown) == len(faces_of(world, person)) and shown == sorted(shown)
    screenshot(world, "person_page.png")
    first = browser.find_elements(By.CSS_SELECTOR, "li.face")[0].get_attribute("data-id")
    submit(world, browser.find_element(By.CSS_SELECTOR, f'li.face[data-id="{first}"] a'))
    photo = WebDriverWait(browser, WAIT_S).until(EC.presence_of_element_located((By.ID, "photo")))
    WebDriverWait(browser, WAIT_S).until(lambda _: photo.get_property("complete"))
    assert photo.get_property("naturalWidth") == 250, "LFW photos are 250 px wide, shown whole"
    assert browser.find_element(By.ID, "face-person").get_attribute("href").endswith(f"/people/{person}")


def test_move_faces_to_a_new_person_another_person_unknown_and_undo(world):
    sign_in(world)
    browser = world["browser"]
    store = world["store"]
    names = who(world)
    source, other = names[PEOPLE[3]], names[PEOPLE[0]]
    before = faces_of(world, source)
    go(world, f"/people/{source}")
    boxes = browser.find_elements(By.CSS_SELECTOR, 'li.face input[name="face"]')
    chosen = {int(box.get_attribute("value")) for box in boxes[:2]}
    for box in boxes[:2]:
        box.click()
    browser.find_element(By.ID, "to-new").click()
    submit(world, browser.find_element(By.ID, "move"))
    assert "moved 2 face(s)" in flash(world)
    created = store.identity_of_faces()[min(chosen)]
    assert created not in (source, other) and faces_of(world, created) == chosen

    go(world, "/history")
    submit(world, browser.find_element(By.CSS_SELECTOR, "button.undo-this"))
    assert "undone" in flash(world) and faces_of(world, source) == before

    go(world, f"/people/{source}")
    box = browser.find_elements(By.CSS_SELECTOR, 'li.face input[name="face"]')[0]
    one = int(box.get_attribute("value"))
    box.click()
    browser.find_element(By.ID, "move-target").send_keys(str(other))
    submit(world, browser.find_element(By.ID, "move"))
    assert store.identity_of_faces()[one] == other
    go(world, f"/people/{other}")
    browser.find_element(By.CSS_SELECTOR, f'li.face input[value="{one}"]').click()
    browser.find_element(By.ID, "to-unknown").click()
    submit(world, browser.find_element(By.ID, "move"))
    assert one in store.pool_face_ids()
    assert any(one in pair for pair in store.links().cannot), "moving a face away is remembered"


def test_hide_and_show_again(world):
    sign_in(world)
    browser = world["browser"]
    person = who(world)[PEOPLE[2]]
    go(world, f"/people/{person}")
    submit(world, browser.find_element(By.ID, "hide"))
    go(world, "/")
    assert str(person) not in [card.get_attribute("data-id") for card in browser.find_elements(By.CSS_SELECTOR, "li.person")]
    go(world, "/?hidden=1")
    assert [card.get_attribute("data-id") for card in browser.find_elements(By.CSS_SELECTOR, "li.person")] == [str(person)]
    go(world, f"/people/{person}")
    submit(world, browser.find_element(By.ID, "hide"))
    go(world, "/")
    assert str(person) in [card.get_attribute("data-id") for card in browser.find_elements(By.CSS_SELECTOR, "li.person")]


def test_unknown_faces_reject_accept_and_one_new_person(world):
    sign_in(world)
    browser = world["browser"]
    store = world["store"]
    go(world, "/unknown")
    clusters = browser.find_elements(By.CSS_SELECTOR, "section.cluster")
    assert len(clusters) >= 3, "two pairs and a lone face (and the face moved back) wait there"
    screenshot(world, "unknown_faces.png")
    first = clusters[0]
    key = first.get_attribute("data-key")
    suggested = first.find_elements(By.CSS_SELECTOR, ".suggestions li[data-person]")
    assert 1 <= len(suggested) <= 3
    rejected = suggested[0].get_attribute("data-person")
    submit(world, suggested[0].find_element(By.CSS_SELECTOR, "button.reject"))
    cluster = browser.find_element(By.CSS_SELECTOR, f'section.cluster[data-key="{key}"]')
    assert rejected not in [li.get_attribute("data-person") for li in cluster.find_elements(By.CSS_SELECTOR, ".suggestions li[data-person]")]

    accepted_faces = [int(face) for face in cluster.find_element(By.CSS_SELECTOR, "input[name=cluster]").get_attribute("value").split(",")]
    target = cluster.find_elements(By.CSS_SELECTOR, ".suggestions li[data-person]")[0].get_attribute("data-person")
    submit(world, cluster.find_elements(By.CSS_SELECTOR, "button.accept")[0])
    assert all(store.identity_of_faces().get(face) == int(target) for face in accepted_faces)

    go(world, "/unknown")
    boxes = browser.find_elements(By.CSS_SELECTOR, "section.cluster input[name=cluster]")
    picked = [int(face) for face in boxes[0].get_attribute("value").split(",")]
    boxes[0].click()
    browser.find_element(By.CSS_SELECTOR, "#bulk input[name=name]").send_keys("Newcomer")
    submit(world, browser.find_element(By.ID, "new-person"))
    created = store.identity_of_faces()[picked[0]]
    assert {row["id"]: row["name"] for row in store.identity_list()}[created] == "Newcomer"
    assert faces_of(world, created) == set(picked)


def test_merge_and_not_this_person_survive_a_full_recluster(world):
    sign_in(world)
    browser = world["browser"]
    store = world["store"]
    names = who(world)
    keep, merged = names[PEOPLE[0]], names[PEOPLE[1]]
    go(world, f"/people/{keep}")
    # The most typical face of the person (last on the page): clustering alone would put it right back.
    doubted = int(browser.find_elements(By.CSS_SELECTOR, "li.face")[-1].get_attribute("data-id"))
    submit(world, browser.find_element(By.CSS_SELECTOR, f'li.face[data-id="{doubted}"] button.not-this'))
    assert "not #" in flash(world) and doubted in store.pool_face_ids()

    go(world, "/")
    for identity in (keep, merged):
        browser.find_element(By.CSS_SELECTOR, f'li.person[data-id="{identity}"] input[name=person]').click()
    submit(world, browser.find_element(By.ID, "merge-selected"))
    assert "merged 1 people" in flash(world)
    together = faces_of(world, keep) | faces_of(world, merged)

    faces_cli("run", "--input", str(world["photos"]), "--out", str(world["out"]), "--folder-labels", "--no-progress",
              "--full-recluster", params=world["params"])
    owners = store.identity_of_faces()
    assert len({owners.get(face) for face in together}) == 1, "two people merged by the user stay one"
    assert owners.get(doubted) != owners.get(next(iter(together))), "a face said not to be this person stays apart"
    runs = [run["kind"] for run in store.lifecycle_runs()]
    assert runs[-1] == "full"
    go(world, f"/people/{owners[next(iter(together))]}")
    assert str(doubted) not in [li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "li.face")]


def test_delete_a_person_for_good(world):
    sign_in(world)
    browser = world["browser"]
    store = world["store"]
    person = who(world)[PEOPLE[2]]
    faces = faces_of(world, person)
    crops = [face["crop"] for identity in store.identities() if identity["id"] == person for face in identity["faces"]]
    go(world, f"/people/{person}")
    submit(world, browser.find_element(By.ID, "delete"))
    assert "tick the box" in flash(world) and faces_of(world, person) == faces
    browser.find_element(By.ID, "confirm-delete").click()
    submit(world, browser.find_element(By.ID, "delete"))
    assert f"deleted #{person}" in flash(world)
    assert person not in {row["id"] for row in store.identity_list()}
    assert not any((world["out"] / crop).exists() for crop in crops)
    remaining = {int(face) for face in store.usable_faces().face_ids}
    assert not faces & remaining, "faces and embeddings are gone"
    assert [event["action"] for event in store.events(person)][-1] == "deleted"
