"""One controller per campaign: a lease in the store, renewed by a heartbeat thread.

A second controller is refused while the lease is live (`CampaignBusy`), unless forced; a lease held
by a process of this host that no longer exists (kill -9) is taken over at once. A controller that
loses its lease (another took the campaign over) is told through `lost` and stops writing.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from hybridnas.store import CampaignBusy, Store

__all__ = ["LEASE_TTL_S", "Lease", "owner_is_dead"]

#: How long a lease lives without renewal; the heartbeat renews it every third of this.
LEASE_TTL_S = 60.0


def owner_is_dead(owner: str) -> bool:
    """True when a lease owner "host:pid:token" names a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's controller: only its lease expiry can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """The campaign's lease, held from `acquire` to `release`, renewed in the background meanwhile."""

    def __init__(self, store: Store, campaign_id: int, ttl_s: float = LEASE_TTL_S, force: bool = False) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.ttl_s = ttl_s
        self.force = force  # take the campaign even if another controller's lease looks live
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()  # set when a renewal finds the lease taken over
        self._done = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, on_lost: threading.Event | None = None) -> None:
        """Take the lease (CampaignBusy when another live controller holds it) and start renewing it;
        `on_lost` is set too when the lease is lost, so a loop waiting on it wakes up."""
        try:
            self.store.acquire_lease(self.campaign_id, self.owner, self.ttl_s, force=self.force)
        except CampaignBusy as e:
            if not owner_is_dead(e.owner):
                raise
            # Its controller was killed on this host (kill -9 leaves the lease behind): take over now.
            self.store.acquire_lease(self.campaign_id, self.owner, self.ttl_s, force=True)
        self._beat = threading.Thread(target=self._heartbeat, args=(on_lost,), name="hybridnas-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self, on_lost: threading.Event | None) -> None:
        while not self._done.wait(self.ttl_s / 3):
            try:
                if not self.store.renew_lease(self.campaign_id, self.owner, self.ttl_s):
                    self.lost.set()
                    if on_lost is not None:
                        on_lost.set()
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried on the next beat
                continue

    def release(self) -> None:
        """Stop renewing and give the lease back (a no-op for a lease already taken over)."""
        self._done.set()
        if self._beat is not None:
            self._beat.join()
        self.store.release_lease(self.campaign_id, self.owner)
