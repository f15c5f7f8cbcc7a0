"""Settings shared by tests/client_python's conftest and tests."""

# The servers' message limit: small, so that a 4 MiB tensor already takes the streamed path.
MAX_MESSAGE_BYTES = 1 << 20
STREAM_CHUNK_BYTES = 256 << 10
