"""What an action asks before it is sent: the tier / codec pickers and the confirmations.

A mixin of the app: it reads the latest frame (tiers, codecs, the rows on screen) and ends
in `submit`, which queues the commands in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evicctl.tui.actions import Request
from evicctl.tui.screens import Choice, ConfirmScreen, PickerScreen


class ActionFlows:
    """Mixed into TopApp: `frame`, `main`, `notify`, `push_screen` and `submit` come from it."""

    frame: Any
    main: Any
    notify: Any
    push_screen: Any
    submit: Any

    def _rows(self, targets: tuple[str, ...]) -> list[Any]:
        by_id = self.main.table.rows_by_id
        return [by_id[t] for t in targets if t in by_id]

    def _tier_names(self) -> list[str]:
        snapshot = self.frame.snapshot if self.frame is not None else None
        return [t.name for t in snapshot.tiers] if snapshot is not None else []

    def _codec_names(self) -> list[str]:
        snapshot = self.frame.snapshot if self.frame is not None else None
        if snapshot is not None and snapshot.manager is not None:
            return list(snapshot.manager.description.codecs)
        from evicctl.manager.description import ManagerDescription

        return list(ManagerDescription().codecs)  # no manager yet: the default menu

    @staticmethod
    def _subject(targets: tuple[str, ...]) -> str:
        return targets[0] if len(targets) == 1 else f"{len(targets)} contexts"

    def _ask_unpin(self, targets: tuple[str, ...]) -> None:
        self.submit(Request("unpin", targets))

    def _ask_pin(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        here = rows[0].tier if len(rows) == 1 and rows[0].tier not in (None, "dropped") else None
        tiers = Choice("tier", "tier", (("any tier", None), *((t, t) for t in self._tier_names())),
                       initial=here)
        codecs = Choice("codec", "codec", (("any codec", None), *((c, c) for c in self._codec_names())))

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None:
                return
            args = {k: v for k, v in choice.items() if v is not None}
            if not args:
                self.notify("pin needs a tier or a codec (or both)", title="pin", severity="warning")
                return
            self.submit(Request("pin", targets, args))

        self.push_screen(PickerScreen(f"pin {self._subject(targets)}", (tiers, codecs)), picked)

    def _ask_evict(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        names = self._tier_names()
        placed = [names.index(r.tier) for r in rows if r.tier in names]
        lower = names[min(placed) + 1:] if placed else names
        options = (*((f"to {t}", t) for t in lower), ("drop (recompute on next use)", "drop"))

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None or choice.get("to") is None:
                return
            to = choice["to"]
            question = f"evict {self._subject(targets)} to {to}?" if to != "drop" else \
                f"drop the KV cache of {self._subject(targets)}?"
            detail = ("Dropped contexts are recomputed (full prefill) on their next request."
                      if to == "drop" else "The placer may move them back when it re-plans.")
            request = Request("evict", targets, {"to": to, "dry_run": False})
            self.push_screen(ConfirmScreen(question, detail), self._submit_if(request))

        self.push_screen(PickerScreen(f"evict {self._subject(targets)}",
                                      (Choice("to", "to", options),)), picked)

    def _ask_recompress(self, targets: tuple[str, ...]) -> None:
        rows = self._rows(targets)
        current = {r.codec for r in rows}
        codecs = [c for c in self._codec_names() if not (len(rows) == 1 and c in current)]

        def picked(choice: dict[str, str | None] | None) -> None:
            if choice is None or choice.get("codec") is None:
                return
            codec = choice["codec"]
            request = Request("recompress", targets, {"codec": codec, "dry_run": False, "force": False})
            self.push_screen(
                ConfirmScreen(f"recompress {self._subject(targets)} as {codec}?",
                              "Dropped tokens and bits cannot be restored from the stored copy."),
                self._submit_if(request))

        self.push_screen(PickerScreen(f"recompress {self._subject(targets)}",
                                      (Choice("codec", "codec", tuple((c, c) for c in codecs)),)),
                         picked)

    def _submit_if(self, request: Request) -> Callable[[bool | None], None]:
        """A confirmation's callback: submit on yes, nothing on no."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.submit(request)

        return answered
