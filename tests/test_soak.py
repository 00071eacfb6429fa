"""A bounded soak: 32 concurrent clients x 25 queries; nothing lost, misrouted or leaking."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.server_process import serving
from tests.socket_client import RecordingClient

CLIENTS, ROUNDS, PER_ROUND = 32, 5, 5


def client_round(client: RecordingClient, name: str, start: int, frame: str, outcomes: dict[str, str]) -> None:
    for index in range(start, start + PER_ROUND):
        rid = f"{name}-{index}"
        kind, payload = client.ask({"id": rid, "question": "how many shapes are there?", "image": frame}, timeout_s=120)
        outcomes[rid] = kind if kind == "response" else payload["code"]


def test_soak_every_query_answered_once_to_its_sender(tiny_model: Path, frame: str) -> None:
    # 32 users who would each have their own address share 127.0.0.1 here: the per-address
    # event limit (100/s) is the attack tests' subject, not this one's.
    with serving(tiny_model, "--max-queue", "64", "--ip-rate-limit", "1000", max_new_tokens=4) as app:
        clients = [RecordingClient(app.url) for _ in range(CLIENTS)]
        outcomes: dict[str, str] = {}
        rss_after_round = []
        try:
            for round_index in range(ROUNDS):
                threads = [
                    threading.Thread(target=client_round, args=(c, f"c{i}", round_index * PER_ROUND, frame, outcomes))
                    for i, c in enumerate(clients)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                rss_after_round.append(app.memory_mib())
            for index, client in enumerate(clients):
                finals = [p["id"] for e, p in client.received if e != "stream"]
                assert len(finals) == len(set(finals)) == ROUNDS * PER_ROUND, "exactly one final per query"
                assert all(rid.startswith(f"c{index}-") for rid in finals), "never another client's answer"
                streamed = {p["id"] for e, p in client.received if e == "stream"}
                assert streamed <= set(finals)
        finally:
            for client in clients:
                client.close()
    assert len(outcomes) == CLIENTS * ROUNDS * PER_ROUND
    assert set(outcomes.values()) <= {"response", "busy"}
    assert list(outcomes.values()).count("response") >= 0.9 * len(outcomes)
    growth = rss_after_round[-1] - rss_after_round[0]
    print(f"soak: {len(outcomes)} queries, RSS after each round (MiB): {[round(r) for r in rss_after_round]}")
    assert growth < 64, f"RSS grew {growth:.0f} MiB over {ROUNDS - 1} rounds: {rss_after_round}"
