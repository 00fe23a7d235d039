"""Real use on tiny weights: concurrent users of the app (loopback only, bounded in count and time) and steady memory
over many consecutive edits. Figures are printed."""
from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.app_server import AppServer, app_server
from threedpe.pipeline import PortraitEditor

USERS, EDITS_PER_USER = 8, 5


@pytest.fixture(scope="module")
def server() -> AppServer:
    return app_server()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_concurrent_users_get_their_own_results(server, tmp_path):
    """8 gradio_client users x 5 edits at once: no error, the GPU queue runs one job at a time, and every user's
    follow-up render comes from their own edit (no cross-talk of per-session state)."""
    queue = server.demo._queue
    gpu_events = [fn for fn in server.demo.fns.values() if fn.concurrency_id == "gpu"]
    limits = {queue.default_concurrency_limit if fn.concurrency_limit == "default" else fn.concurrency_limit
              for fn in gpu_events}
    # the edits of the three tabs, their strength re-renders, each followed by a video and a mesh, the
    # customisation's two steps, a clip and a batch share one worker (live streams have a queue of their own)
    assert len(gpu_events) == 3 * (2 + 2 * 2) + 2 + 2 and limits == {1}
    assert {fn.name for fn in gpu_events} == {"edit_text", "edit_reference", "apply_style", "set_strength",
                                             "orbit_video", "mesh", "generate_pairs", "customize", "edit_video",
                                             "edit_batch"}
    assert queue.max_size >= USERS  # every user fits in the visible queue

    references = []
    for user in range(USERS):  # a different reference per user: a different edit per user
        path = tmp_path / f"reference{user}.png"
        Image.open(server.reference).rotate(user * 7).save(path)
        references.append(path)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def user(index: int) -> None:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / f"downloads{index}"))
        for _ in range(EDITS_PER_USER):
            try:
                start = time.perf_counter()
                outputs = client.predict(handle_file(server.photo), handle_file(references[index]), False,
                                         api_name="/edit_reference")
                seconds = time.perf_counter() - start
                own_view = np.asarray(Image.open(outputs[3]))
                again = np.asarray(Image.open(client.predict(0, 0, api_name="/render_view_reference")))
                with lock:
                    latencies.append(seconds)
                    if not np.array_equal(own_view, again):
                        errors.append(f"user {index}: the re-rendered view is not from this user's edit")
            except Exception as error:  # noqa: BLE001 -- collected and reported below
                with lock:
                    errors.append(f"user {index}: {type(error).__name__}: {error}")

    start = time.perf_counter()
    threads = [threading.Thread(target=user, args=(index,)) for index in range(USERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    wall = time.perf_counter() - start
    assert not any(thread.is_alive() for thread in threads), "users still waiting after 10 minutes"
    assert not errors, errors
    assert len(latencies) == USERS * EDITS_PER_USER
    p50, p95 = statistics.median(latencies), float(np.percentile(latencies, 95))
    print(f"\n{USERS} users x {EDITS_PER_USER} edits: {len(latencies)} edits in {wall:.1f} s, latency p50 {p50:.2f} s, "
          f"p95 {p95:.2f} s (one GPU job at a time)")


def test_memory_is_steady_over_200_edits(tiny_weights, tmp_path):
    editor = PortraitEditor.from_pretrained(tiny_weights, cache_dir=tmp_path)
    photo = Image.open(Path(__file__).resolve().parents[1] / "examples" / "anchors" / "astronaut.png")
    reference = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    warm_up, total = 20, 200
    samples = []
    for index in range(total):
        result = editor(photo, reference=reference, aligned=True)
        result.strip(), result.view(15, 5), result.depth()
        if index + 1 >= warm_up and (index + 1) % 20 == 0:
            gc.collect()
            samples.append(rss_bytes())
    growth = samples[-1] / samples[0] - 1
    print(f"\nRSS over {total} edits: {samples[0] / 2**20:.0f} MiB after {warm_up} (warm-up), "
          f"{samples[-1] / 2**20:.0f} MiB after {total}: {growth:+.1%}")
    assert growth <= 0.05
