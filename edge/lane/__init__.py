"""The lane: a lean HTTP/1.1 server (asyncio.Protocol + httptools) for the hot POST routes
(OpenAI's and the Messages API's).

It serves only the plain common case (edge/lane/protocol.py says which), streamed answers
included (written with aiohttp's own response and writer: edge/lane/stream.py), and hands every
other connection to aiohttp, bytes and all, before it starts handling a request: aiohttp keeps
every unusual behaviour (hostile input, 100-continue, HTTP/1.0, chunked or slow bodies, CORS,
every other route). Chosen with `edge.server: lane` (edge/lane/server.py)."""
