"""Baseline servers, one module each, started as ``python -m bench.servers.MODULE --port P``.

Every server streams ``GET /stream?n=N&interval=S``: N ``processing`` envelopes, each
built, transformed (``value_f``), stamped and encoded when it is produced (except the
pre-encoded reference in `raw_asgi`). ``interval`` > 0 paces production (latency runs).

========================  ====  ===========================================================
module                    name  what
========================  ====  ===========================================================
nexios_app                A     Nexios guide pattern: ``response.stream(gen())``, json.dumps
starlette_line            B     Starlette ``StreamingResponse``, one orjson line per item
starlette_coalesced       C     producer task -> ``asyncio.Queue``; send what is ready
raw_asgi                  D     raw ASGI, pre-encoded, 256 envelopes per body (``/stream``);
                                live work into a ``bytearray`` (``/live``)
fanout                    -     one source broadcast to K clients (per-client bounded queues)
========================  ====  ===========================================================
"""
