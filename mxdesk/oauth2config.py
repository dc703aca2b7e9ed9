"""The [oauth2.NAME] settings: known providers' endpoints and one registered application; apart
from mxdesk.oauth2 (HTTP) so that reading the config loads no HTTP client."""

from __future__ import annotations

from dataclasses import dataclass, field

GOOGLE_DEVICE = "https://oauth2.googleapis.com/device/code"
PROVIDER_DEFAULTS: dict[str, dict[str, str]] = {
    "microsoft": {
        "device_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        "token_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        # offline_access is what makes the token endpoint hand out a refresh token.
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All"
        " https://outlook.office.com/POP.AccessAsUser.All"
        " https://outlook.office.com/SMTP.Send offline_access",
    },
    # Google's device flow grants only an allow-list of scopes (developers.google.com/identity/
    # protocols/oauth2/limited-input-device#allowedscopes: openid, email, profile, drive.file,
    # drive.appdata, youtube …). https://mail.google.com/, the only scope Gmail's IMAP, POP and
    # SMTP accept, is not on it: the device endpoint answers "invalid_scope: Invalid device flow
    # scope" (googleapis/oauth2client#88, google-api-python-client#41, brockamer/findajob#115).
    # The entry stays so that refresh() works for a Gmail refresh token obtained by another flow;
    # `mxdesk channel authorize` cannot get one, and Gmail channels use an app password.
    "google": {
        "device_endpoint": GOOGLE_DEVICE,
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "scope": "https://mail.google.com/",
    },
}


@dataclass(frozen=True)
class OAuth2Provider:
    """One [oauth2.NAME] table of the config: the registered application and its endpoints."""

    name: str
    client_id: str
    client_secret: str = field(repr=False)  # "" for public clients (Microsoft's device flow)
    device_endpoint: str
    token_endpoint: str
    scope: str  # space-separated
