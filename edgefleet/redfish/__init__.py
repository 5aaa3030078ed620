"""Out-of-band reimaging over Redfish, the only code that speaks it: ``connector`` owns all BMC HTTP
(auth, TLS trust, retries, deadlines, error parsing), ``driver`` the operations and the reimage
sequence, ``quirks`` the vendor quirks table."""

from edgefleet.redfish.connector import (
    OPERATION_HEADER,
    BmcClients,
    BmcUrlResolver,
    Connector,
    RedfishResponse,
    RetryPolicy,
    Timeouts,
    bmc_base_url,
    connector_for_node,
    error_from_response,
    resolve_password,
)
from edgefleet.redfish.driver import (
    MediaSlot,
    PowerState,
    RedfishDriver,
    ReimageResult,
    ReimageStep,
    SlotPlan,
    choose_reset,
    choose_slots,
    eject_reimage_media,
    reimage_sequence,
)
from edgefleet.redfish.quirks import QUIRKS, VendorQuirks, quirks_for

__all__ = [
    "OPERATION_HEADER",
    "QUIRKS",
    "BmcClients",
    "BmcUrlResolver",
    "Connector",
    "MediaSlot",
    "PowerState",
    "RedfishDriver",
    "RedfishResponse",
    "ReimageResult",
    "ReimageStep",
    "RetryPolicy",
    "SlotPlan",
    "Timeouts",
    "VendorQuirks",
    "bmc_base_url",
    "choose_reset",
    "choose_slots",
    "connector_for_node",
    "eject_reimage_media",
    "error_from_response",
    "quirks_for",
    "reimage_sequence",
    "resolve_password",
]
