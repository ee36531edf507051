"""A session channel opened ahead of its command, so a pooled command costs one round trip instead of two.

An SSH exec is two round trips: CHANNEL_OPEN waits for its confirmation (the request that follows must name
the server's channel number), then the exec request waits for its reply, with the output right behind it.
A channel opened in advance (a "spare") leaves only the exec. asyncssh has no public way to open a session
channel and send its request later, so everything that relies on its internals is in this module, and
tests/test_ssh_spare.py fails when asyncssh changes any of it:

- SSHClientChannel(conn, loop, utf8_decode_errors, encoding, errors, window, max_pktsize), as
  SSHClientConnection.create_session builds it (with conn._update_recv_pktlen(max_pktsize));
- SSHClientChannel._open(b"session"), the CHANNEL_OPEN round trip, returning the confirmation packet;
- SSHClientChannel.create(...) starting with `await self._open(b'session')`: an instance attribute that
  returns the confirmation already received lets create() carry on from there (exec request, session start)
  exactly as it does for a channel it opened itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import asyncssh
    from asyncssh.packet import SSHPacket


class SpareChannel:
    """An open session channel with no request on it yet; start() turns it into a running command once."""

    def __init__(self, chan: asyncssh.SSHClientChannel[bytes], packet: SSHPacket) -> None:
        self._chan: asyncssh.SSHClientChannel[bytes] | None = chan
        self._packet = packet

    @property
    def usable(self) -> bool:
        """Not started, and neither the server nor the connection has closed it."""
        return self._chan is not None and not self._chan.is_closing()

    async def start(self, command: str, *, keep_stdin: bool) -> asyncssh.SSHClientProcess[bytes]:
        """Send the exec request and return the process, as conn.create_process(command, encoding=None,
        stdin=PIPE or DEVNULL) would; raises asyncssh.ChannelOpenError when the server refuses or has closed
        the channel meanwhile (the command did not start: opening a channel of its own is safe)."""
        import asyncssh

        chan, self._chan = self._chan, None
        if chan is None:
            raise RuntimeError("a spare channel starts one command")
        packet = self._packet

        async def opened(_chantype: bytes, *_args: bytes) -> SSHPacket:
            return packet

        setattr(chan, "_open", opened)  # noqa: B010 (create() asks it for the confirmation it already has)
        try:
            session = await chan.create(
                asyncssh.SSHClientProcess,  # session_factory
                command,
                None,  # subsystem
                {},  # env
                False,  # request_pty
                None,  # term_type
                None,  # term_size
                {},  # term_modes
                False,  # x11_forwarding
                None,  # x11_display
                None,  # x11_auth_path
                False,  # x11_single_connection
                False,  # agent_forwarding
            )
        except BaseException:
            chan.close()
            raise
        process = cast("asyncssh.SSHClientProcess[bytes]", session)
        stdin: Any = asyncssh.PIPE if keep_stdin else asyncssh.DEVNULL
        await process.redirect(stdin, asyncssh.PIPE, asyncssh.PIPE, io.DEFAULT_BUFFER_SIZE, True, True)
        return process

    def close(self) -> None:
        chan, self._chan = self._chan, None
        if chan is not None:
            chan.close()


async def open_spare(conn: asyncssh.SSHClientConnection) -> SpareChannel:
    """Open a session channel on conn (one round trip) without a request on it; raises what
    create_process raises when the channel cannot be opened (asyncssh.ChannelOpenError, OSError)."""
    import asyncssh

    options: Any = getattr(conn, "_options")  # noqa: B009
    window, max_pktsize = options.window, options.max_pktsize
    conn._update_recv_pktlen(max_pktsize)
    chan: asyncssh.SSHClientChannel[bytes] = asyncssh.SSHClientChannel(
        conn,
        conn._loop,
        conn._utf8_decode_errors,
        None,
        "strict",
        window,
        max_pktsize,
    )
    opening = asyncio.ensure_future(chan._open(b"session"))
    try:
        packet = await asyncio.shield(opening)
    except asyncio.CancelledError:
        # the server will confirm a channel nobody will use: close it when it does, or it holds a session
        opening.add_done_callback(functools.partial(_close_when_opened, chan))
        raise
    except BaseException:
        chan.close()
        raise
    packet.check_end()
    return SpareChannel(chan, packet)


def _close_when_opened(chan: asyncssh.SSHClientChannel[bytes], opening: asyncio.Future[SSHPacket]) -> None:
    if not opening.cancelled():
        opening.exception()  # retrieved: a failed open needs no closing
    chan.close()


def close_unclaimed(task: asyncio.Task[SpareChannel | None]) -> None:
    """Done callback for a spare whose claimant went away: close the channel it opened, if any."""
    if task.cancelled():
        return
    with contextlib.suppress(Exception):
        spare = task.result()
        if spare is not None:
            spare.close()
