"""A page opened in real headless Chromium (Debian's package, installed by scripts/test.sh),
driven over the DevTools protocol: its console errors and exceptions, the value of a script
run in it after load, and a screenshot."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import tempfile


def open_page(url: str, *, expression: str, screenshot: str, width: int = 1280,
              height: int = 1600, timeout: float = 60.0) -> dict:
    """Load ``url``; ``{"errors": [...], "value": <expression's value>}``, the full page saved
    as PNG to ``screenshot``. Raises RuntimeError when Chromium is not installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("chromium is not installed (scripts/test.sh installs Debian's)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            for line in proc.stderr:
                found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                if found:
                    port = int(found.group(1))
                    break
            if port is None:
                raise RuntimeError(f"chromium did not start (exit {proc.wait()})")
            return asyncio.run(asyncio.wait_for(
                _drive(port, url, expression, screenshot), timeout))
        finally:
            proc.kill()
            proc.wait()


async def _drive(port: int, url: str, expression: str, screenshot: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            pages = [t for t in await reply.json() if t["type"] == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            errors: list[str] = []
            ids = iter(range(1, 10**6))
            loaded = asyncio.Event()

            async def call(method: str, **params):
                mine = next(ids)
                await ws.send_json({"id": mine, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    _event(message, errors, loaded)
                    if message.get("id") == mine:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message["result"]

            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            while not loaded.is_set():
                _event(await ws.receive_json(), errors, loaded)
            result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            return {"errors": errors, "value": result["result"].get("value")}


def _event(message: dict, errors: list[str], loaded: asyncio.Event) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Page.loadEventFired":
        loaded.set()
    elif method == "Runtime.exceptionThrown":
        errors.append(params["exceptionDetails"].get("text", "exception"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
        errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        errors.append(params["entry"].get("text", ""))
