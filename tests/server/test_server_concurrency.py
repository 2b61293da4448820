"""Many clients at once, and fairness: a slow peer never delays a fast one."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from helpers import file_packets, make_identity, packet_bytes, upload
from protocol import Acknowledged, CrcOk, FileReceived, cksum
from protocol.codes import RequestCode
from helpers import raw_header
from timing_helpers import median_time, within_load

CLIENTS = 50


def test_50_clients_at_once_each_with_its_own_file(server):
    barrier = threading.Barrier(CLIENTS)

    def one(index: int):
        data = os.urandom(20_000 + index * 997)
        with server.client() as client:
            barrier.wait(timeout=30)
            identity = make_identity(client)
            answer = upload(client, identity, f"file-{index}.bin", data, 1024 + index * 64)
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=f"file-{index}.bin")), Acknowledged)
        return identity, index, data

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(CLIENTS)))
    for identity, index, data in results:
        stored = server.data_dir / "received_files" / identity.client_id.hex() / f"file-{index}.bin"
        assert stored.read_bytes() == data


def fast_flow(server) -> float:
    """A fresh client's register, key and 200 kB upload; its time."""
    with server.client() as fast:
        started = time.monotonic()
        fast_identity = make_identity(fast)
        data = os.urandom(200_000)
        answer = upload(fast, fast_identity, "fast.bin", data, 8192)
        elapsed = time.monotonic() - started
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    return elapsed


def test_slow_peers_do_not_delay_a_fast_one(server):
    fast_flow(server)  # warm up (key pairs are made on first use)
    alone = median_time(lambda: fast_flow(server))  # the baseline: no slow peers yet
    with server.client() as uploader:
        identity = make_identity(uploader)
    stop = threading.Event()
    slow_clients = [server.client() for _ in range(3)]

    def slow_upload(client):
        raw = packet_bytes(file_packets(identity, "slow.bin", os.urandom(1_000_000), 2_000_000)[0])
        for i in range(0, len(raw), 512):
            if stop.is_set():
                return
            client.send_raw(raw[i : i + 512])
            time.sleep(0.01)

    def slow_header(client):
        for byte in raw_header(RequestCode.REGISTER, 255):
            if stop.is_set():
                return
            client.send_raw(bytes([byte]))
            time.sleep(0.2)

    threads = [
        threading.Thread(target=slow_upload, args=(slow_clients[0],)),
        threading.Thread(target=slow_header, args=(slow_clients[1],)),
    ]  # slow_clients[2] stays silent
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # the slow peers are under way (sooner or later: either way they are slow)
        timings = [fast_flow(server) for _ in range(3)]
        assert within_load(max(timings), alone), (alone, timings)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for client in slow_clients:
            client.close()
