"""start() returns once the booting server answers (wait_for_server), against the AWS emulator.

Nothing boots on an emulated instance, so the test plays the server: a loopback listener answers
``GET /user/<name>/api`` as jupyter-server does, with the status the test sets, and the spawner
reaches it through ``server_url_template``. Until the test starts it, nothing listens there (a
booting instance: connections refused).
"""

from __future__ import annotations

import asyncio

import pytest
from jupyterhub.spawner import SpawnException
from waiting import free_port, until


class ServerStandIn:
    """A loopback HTTP listener answering every request with ``status`` (jupyter-server's /api)."""

    def __init__(self, port: int):
        self.port, self.status, self.paths = port, 503, []
        self._server: asyncio.Server | None = None

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", self.port)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        self.paths.append(request.split(b" ")[1].decode())
        body = b'{"version": "2.21.1"}'
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (self.status, len(body), body))
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def server():
    stand_in = ServerStandIn(free_port())
    yield stand_in
    await stand_in.close()


def waiting_spawner(new_spawner, port: int, **traits):
    return new_spawner(wait_for_server=True, server_url_template="http://127.0.0.1:{port}", notebook_port=port,
                       ready_interval=0.05, **traits)


async def running(spawner) -> None:
    """Until the watcher reports the spawn's instance running (the instance booting from then on)."""
    await until(lambda: spawner.instance_id and (view := spawner._watcher().get(spawner.instance_id))
                and view.state == "running", timeout=30, what="the instance running")


async def test_start_returns_only_once_the_server_answers_below_500(new_spawner, server, live):
    spawner = waiting_spawner(new_spawner, server.port)
    start = asyncio.create_task(spawner.start())
    await running(spawner)
    await until(lambda: spawner._events[-1]["message"] == "Waiting for the notebook server", timeout=10)
    assert not start.done()  # running, and nothing listens yet: still starting
    await server.listen()
    await until(lambda: len(server.paths) >= 2, timeout=10, what="two probes answered 503")
    assert not start.done()  # 503: JupyterHub takes any status of 500 and up for "not up yet"
    server.status = 200
    url = await asyncio.wait_for(start, 10)
    assert url == f"http://127.0.0.1:{server.port}"
    assert set(server.paths) == {"/user/alice/api"}  # the path JupyterHub's own check asks
    assert [i["State"]["Name"] for i in live()] == ["running"]
    await spawner.stop()


async def test_an_instance_ending_while_its_server_boots_fails_the_start_at_once_and_leaves_nothing(
        new_spawner, emu, server, live, hub_secrets):
    spawner = waiting_spawner(new_spawner, server.port, user_options={"instance_class": "spot"})
    start = asyncio.create_task(spawner.start())
    await running(spawner)
    emu.terminate(spawner.instance_id, spot=True)
    with pytest.raises(SpawnException) as info:
        await asyncio.wait_for(start, 10)  # not start_timeout (15 s): EC2 said so
    assert info.value.reason == "spot-interruption"
    assert live() == [] and hub_secrets() == []


async def test_a_server_that_never_answers_fails_the_start_at_start_timeout_and_leaves_nothing(
        new_spawner, server, live, hub_secrets):
    spawner = waiting_spawner(new_spawner, server.port, start_timeout=6)
    await server.listen()  # answers, but only 503
    with pytest.raises(SpawnException) as info:
        await spawner.start()
    assert info.value.reason == "timeout"
    assert info.value.message == "The notebook server did not answer within 6 s of the spawn request."
    assert server.paths  # probed while running: the start ended in the wait for the server
    assert spawner.instance_id is None
    assert live() == [] and hub_secrets() == []


async def test_a_start_cancelled_while_the_server_boots_keeps_the_instance_for_stop_or_a_restarted_hub(
        new_spawner, server, live, hub_secrets):
    """JupyterHub's start_timeout and its DELETE of a pending spawn cancel start() and then call
    stop(); a hub shutdown cancels it and nothing follows: the instance is the server's, as once
    start() returned at running."""
    spawner = waiting_spawner(new_spawner, server.port)
    start = asyncio.create_task(spawner.start())
    await running(spawner)
    await until(lambda: spawner._events[-1]["message"] == "Waiting for the notebook server", timeout=10)
    iid = spawner.instance_id
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert spawner.get_state()["instance_id"] == iid
    assert [i["InstanceId"] for i in live()] == [iid] and len(hub_secrets()) == 1
    restarted = waiting_spawner(new_spawner, server.port)  # a restarted hub's spawner, its state loaded
    restarted.load_state(spawner.get_state())
    assert await restarted.poll() is None  # running: JupyterHub then waits for the server itself
    await spawner.stop()  # what JupyterHub does after its own timeout or a DELETE
    assert live() == [] and hub_secrets() == []
