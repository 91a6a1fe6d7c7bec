"""The live page in chromium: the service runs, ``simulate`` publishes a few sensors in
real time, and the page must list them, take the API key, draw the chosen sensor's
chunks as they come and, when its connection is cut, reconnect by itself and go on
from where it was, without a gap.

With ``SOUNDSTREAM_SCREENSHOT=docs/live.png`` the test also saves the page as a
picture (the README's).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import anyio
import pytest
from support import running, stored_chunks, tcp_proxy, wait_for

from soundstream import config
from soundstream.sim.simulate import SimulateOptions, simulate

pytestmark = [pytest.mark.slow, pytest.mark.browser]

KEY = "browser-key-0123456789"
PREFIX = "web"
SENSOR = f"{PREFIX}-000"
STATE = "window.soundstreamLive"
# The newest columns of the spectrogram: where new frames are drawn.
RIGHT_EDGE = """() => {
  const canvas = document.getElementById("mel");
  const data = canvas.getContext("2d").getImageData(canvas.width - 60, 0, 60, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] + data[i + 1] + data[i + 2] > 3 * 0x11 + 30) lit++;  // not the background
  }
  return {pixels: Array.from(data), lit};
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def holds(page: Any, expression: str, within: float = 20) -> None:
    """Until ``expression`` is true in the page. Polled from here with evaluate: the
    page's Content-Security-Policy (no eval) forbids wait_for_function's way."""

    async def true() -> bool:
        return bool(await page.evaluate(expression))

    await wait_for(true, within)


class Proxy:
    """A TCP proxy between the browser and the service that the test can cut."""

    def __init__(self, tg: anyio.abc.TaskGroup, target: int) -> None:
        self._tg = tg
        self._target = target
        self.port = free_port()
        self._scope: anyio.CancelScope | None = None

    async def start(self) -> None:
        scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                await tcp_proxy(self.port, self._target, task_status=task_status)

        self._scope = scope
        await self._tg.start(run)

    def cut(self) -> None:
        """Stop listening and drop every connection through it."""
        assert self._scope is not None
        self._scope.cancel()


async def test_the_live_page_draws_a_sensor_and_resumes_after_a_cut(
    topology: config.Settings, browser: Any
) -> None:
    settings = config.replace(topology, api_key_digests=(config.key_digest(KEY),))
    options = SimulateOptions(
        sensors=3, seconds=60, realtime=True, chunk_ms=250, sensor_prefix=PREFIX, progress=False
    )
    async with running(settings) as service, anyio.create_task_group() as tg:
        tg.start_soon(simulate, settings, options)
        await wait_for(lambda: _stored(settings, 6))
        proxy = Proxy(tg, service.port)
        await proxy.start()
        page = await browser.new_page(viewport={"width": 1000, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # The sensor list asks for the key once, then lists and links the sensors.
        await page.goto(f"http://127.0.0.1:{proxy.port}/live/")
        await page.wait_for_selector("#key-form:not([hidden])")
        await page.fill("#key", KEY)
        await page.click("#key-form button")
        link = page.locator(f"#sensors a[href='{SENSOR}']")
        await link.wait_for()
        await holds(
            page, "() => !document.querySelector('#sensors tbody').textContent.includes('…')"
        )
        assert await page.locator("#sensors tbody tr").count() == 3
        await link.click()

        # The live page: the key is remembered in this tab; chunks arrive and are drawn.
        await page.wait_for_url(f"**/live/{SENSOR}")
        await holds(page, f"{STATE}.events >= 3", within=15)
        before = await page.evaluate(RIGHT_EDGE)
        drawn = await page.evaluate(f"{STATE}.events")
        await holds(page, f"{STATE}.events >= {drawn + 2}", within=15)
        after = await page.evaluate(RIGHT_EDGE)
        assert after["pixels"] != before["pixels"]  # the new frames are drawn there
        assert after["lit"] > 0.5 * 60 * 256  # with colour, not the empty background
        assert await page.evaluate(f"{STATE}.status") == "connected"

        # Cut the connection: the page says it is reconnecting; chunks are committed
        # meanwhile; once the proxy is back it resumes with Last-Event-ID.
        seen = await page.evaluate(f"{STATE}.seqs.length")
        proxy.cut()
        await holds(page, f"{STATE}.status.startsWith('reconnecting')")
        await wait_for(lambda: _stored(settings, 12 + 3 * 4))  # a second of chunks more
        await proxy.start()
        await holds(page, f"{STATE}.connects >= 2", within=20)
        await holds(page, f"{STATE}.seqs.length >= {seen + 8}", within=20)
        state = await page.evaluate(STATE)
        seqs = state["seqs"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gap, no repeat
        assert not state["missed"]
        assert not errors

        target = os.environ.get("SOUNDSTREAM_SCREENSHOT")
        if target:
            await holds(page, f"{STATE}.columns >= 900", within=60)  # a full canvas
            await page.screenshot(path=target, full_page=True)
        await page.close()
        tg.cancel_scope.cancel()


async def _stored(settings: config.Settings, n: int) -> bool:
    return await stored_chunks(settings.database_url) >= n
