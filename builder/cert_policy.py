"""Pure decisions about stored certificates: does it still fit, and why not.

Nothing here reads or writes files; the store (builder.state) feeds it parsed
certificates and the clock, and turns its answers into events, errors or warnings.

CA policy (`ca_verdict`):
- an expired CA is refused;
- a CA that ends before a certificate it would sign now (now + cert_days) is refused:
  node certificates never outlive their CA;
- otherwise a CA with less than `ca_notice(spec)` left gets a warning. That window is
  cert_days + max(renew_before, 90 days): the warning starts at least 90 days (or the
  node renewal window, if longer) before the day the CA can no longer sign a full-length
  node certificate, leaving time to rotate it and redeploy every node.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from builder.model import PKISettings
from builder.pki import CertInfo

__all__ = [
    "MIN_CA_NOTICE",
    "CASpec",
    "CertSpec",
    "ca_notice",
    "ca_verdict",
    "cert_problems",
    "issue_problem",
    "new_ca_problem",
    "permitted_diff",
]

MIN_CA_NOTICE = timedelta(days=90)
ROTATE_CA = "`nomad-build pki rotate-ca`"


@dataclass(frozen=True)
class CASpec:
    common_name: str
    permitted_dns: tuple[str, ...]
    days: int
    # The node certificates this CA must sign (pki.cert_days, pki.renew_before_days);
    # None: not known to the caller, only expiry itself is checked.
    cert_days: int | None = None
    renew_before: timedelta = timedelta(0)
    # The deliberate command that replaces this CA, as messages name it.
    rotate: str = ROTATE_CA


@dataclass(frozen=True)
class CertSpec:
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    days: int
    renew_before: timedelta
    backdate: timedelta


def leaf_spec(names: tuple[str, tuple[str, ...], tuple[str, ...]], pki: PKISettings) -> CertSpec:
    """A node certificate's spec from its (common name, DNS names, IPs) and the cluster's
    [pki] terms (Nomad's and Consul's certificates alike)."""
    cn, dns, ips = names
    return CertSpec(
        common_name=cn,
        dns_names=dns,
        ip_addresses=ips,
        days=pki.cert_days,
        renew_before=timedelta(days=pki.renew_before_days),
        backdate=timedelta(minutes=pki.backdate_minutes),
    )


def _day(d: datetime) -> str:
    return d.date().isoformat()


def ca_notice(spec: CASpec) -> timedelta:
    """How long before its end a CA is warned about (see the module doc)."""
    notice = max(spec.renew_before, MIN_CA_NOTICE)
    return notice + timedelta(days=spec.cert_days or 0)


def new_ca_problem(spec: CASpec) -> str | None:
    """Why a CA made now from `spec` could not sign the node certificates, or None."""
    if spec.cert_days is not None and spec.cert_days > spec.days:
        return (
            f"pki.cert_days ({spec.cert_days}) is longer than pki.ca_days ({spec.days}): "
            "node certificates may not outlive their CA; lower pki.cert_days or raise "
            "pki.ca_days"
        )
    return None


def ca_verdict(info: CertInfo, spec: CASpec, now: datetime) -> tuple[str | None, str | None]:
    """(refusal, warning) for the stored CA `info`; at most one of them is set."""
    end = info.not_after
    if end <= now:
        return (
            f"the CA expired on {_day(end)}: nodes no longer trust anything it signed; "
            f"replace it deliberately with {spec.rotate}",
            None,
        )
    if spec.cert_days is not None and now + timedelta(days=spec.cert_days) > end:
        return (
            f"the CA expires on {_day(end)}, before a certificate issued now would "
            f"({spec.cert_days} days, until {_day(now + timedelta(days=spec.cert_days))}); "
            f"lower pki.cert_days or rotate the CA with {spec.rotate}",
            None,
        )
    if end - now < ca_notice(spec):
        last = end - timedelta(days=spec.cert_days or 0)
        return None, (
            f"the CA expires on {_day(end)} ({(end - now).days} days left); rotate it "
            f"with {spec.rotate} before {_day(last)}, when it can no longer sign "
            "a full-length node certificate"
        )
    return None, None


def _diff(label: str, old: set[str], new: set[str], key: Callable[[str], object]) -> str | None:
    """'<label> changed: +added -removed', comparing by `key` (case/notation-insensitive)."""
    if old == new:  # the usual answer, without a key per name
        return None
    old_k = {key(x): x for x in old}
    new_k = {key(x): x for x in new}
    if old_k.keys() == new_k.keys():
        return None
    added = sorted(new_k[k] for k in new_k.keys() - old_k.keys())
    removed = sorted(old_k[k] for k in old_k.keys() - new_k.keys())
    return f"{label} changed: " + " ".join([f"+{a}" for a in added] + [f"-{r}" for r in removed])


def permitted_diff(info: CertInfo, spec: CASpec) -> str | None:
    return _diff("permitted", set(info.permitted_dns), set(spec.permitted_dns), str.lower)


@functools.lru_cache(maxsize=1 << 14)  # the same addresses, compared on every run
def _ip_key(ip: str) -> object:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return ip


def _window(td: timedelta) -> str:
    if td == timedelta(days=td.days):
        return f"{td.days}-day"
    return str(td)


def cert_problems(
    info: CertInfo,
    spec: CertSpec,
    *,
    signed_by_ca: bool,
    ca_not_after: datetime | None,
    now: datetime,
) -> list[str]:
    """Why a stored node certificate must be re-issued; [] if it still fits.

    `signed_by_ca`: it verifies against the current CA; `ca_not_after`: that CA's end.
    """
    reasons: list[str] = []
    if info.subject_cn != spec.common_name:
        reasons.append(f"common name changed: {info.subject_cn} -> {spec.common_name}")
    for r in (
        _diff("DNS names", set(info.dns_names), set(spec.dns_names), str.lower),
        _diff("IP addresses", set(info.ip_addresses), set(spec.ip_addresses), _ip_key),
    ):
        if r is not None:
            reasons.append(r)
    if not signed_by_ca:
        reasons.append("not signed by the current CA")
    elif ca_not_after is not None and info.not_after > ca_not_after:
        reasons.append(f"outlives the CA (which expires {_day(ca_not_after)})")
    left = info.not_after - now
    if left <= timedelta(0):
        reasons.append(f"expired {_day(info.not_after)}")
    elif left < spec.renew_before:
        reasons.append(
            f"expires {_day(info.not_after)} "
            f"(inside the {_window(spec.renew_before)} renewal window)"
        )
    return reasons


def issue_problem(
    now: datetime, days: int, ca_not_after: datetime, rotate: str | None = None
) -> str | None:
    """Why a `days`-day certificate may not be issued now under a CA ending then, or None;
    `rotate`: the command that replaces that CA (default: the cluster CA's)."""
    end = now + timedelta(days=days)
    if end <= ca_not_after:
        return None
    return (
        f"a {days}-day certificate issued now would end {_day(end)}, after the CA "
        f"(which expires {_day(ca_not_after)}); node certificates never outlive their CA: "
        f"lower pki.cert_days or rotate the CA with {rotate or ROTATE_CA}"
    )
