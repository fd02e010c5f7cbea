from __future__ import annotations

import asyncio

from safeship.analysis.providers.scrape import Target, parse_gauges, scrape

PAGE = """# TYPE requests_total counter
requests_total{version="v1"} 12
# TYPE memory_pressure gauge
memory_pressure{version="v1"} 0.3
# TYPE queue_depth gauge
queue_depth{version="v1",shard="a"} 2
queue_depth{version="v1",shard="b"} 4
"""


def test_parse_keeps_gauges_and_averages_label_sets() -> None:
    assert parse_gauges(PAGE) == {"memory_pressure": 0.3, "queue_depth": 3.0}
    assert parse_gauges(PAGE, {"queue_depth"}) == {"queue_depth": 3.0}


async def test_unreachable_instances_give_no_data_not_zero() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = PAGE.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await scrape([Target("v1", "127.0.0.1", port), Target("v2", "127.0.0.1", 1)])
    finally:
        server.close()
        await server.wait_closed()
    assert result == {"v1": {"memory_pressure": 0.3, "queue_depth": 3.0}}
