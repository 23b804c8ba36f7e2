"""Built-in published protocols: ``cfm-2d``, ``ffjord-tabular`` and ``ffjord-toy``, each a TOML file in
``protocols/`` beside this module (the keys are described in :mod:`cnfbench.protocols`)."""

from __future__ import annotations

from importlib import resources
from typing import ClassVar

from cnfbench.contracts import Protocol
from cnfbench.hookspecs import hookimpl


class PackagedProtocol(Protocol):
    """A protocol whose document is a TOML file shipped in ``cnfbench_plugins/protocols/``."""

    resource: ClassVar[str] = ""

    @classmethod
    def document(cls) -> str:
        return (resources.files("cnfbench_plugins") / "protocols" / cls.resource).read_text(encoding="utf-8")


class FlowMatching2D(PackagedProtocol):
    name = "cfm-2d"
    description = ("Tong et al. (SF2M, AISTATS 2024) Table 2: I-CFM and OT-CFM from N(0, I) to 8gaussians, moons "
                   "and scurve (2-Wasserstein, normalized path energy; 5 seeds)")
    resource = "cfm-2d.toml"


class FfjordTabular(PackagedProtocol):
    name = "ffjord-tabular"
    description = ("Grathwohl et al. (FFJORD, ICLR 2019) Table 2: test NLL on POWER, GAS, HEPMASS, MINIBOONE and "
                   "BSDS300 with Table 4's architectures")
    resource = "ffjord-tabular.toml"


class FfjordToy(PackagedProtocol):
    name = "ffjord-toy"
    description = "Grathwohl et al. (FFJORD, ICLR 2019) Figure 2: the 2-D toy densities, a visual protocol"
    resource = "ffjord-toy.toml"


@hookimpl
def cnfbench_protocols() -> list[type[Protocol]]:
    return [FlowMatching2D, FfjordTabular, FfjordToy]
