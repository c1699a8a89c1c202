"""One whole flow through a client generated from the server's OpenAPI document.

Run by scripts/api-contract.sh after `openapi-python-client generate` made the package
`tessera_api_client`: creates a user, starts a pairing, pairs a device built on the real core
(the tessera-device example binary), asks for an authentication, approves it on the device and
reads it approved (long-polling with ?wait). A contract the generated client cannot follow (a
missing operation, a body it cannot parse, a status it does not expect) fails here.
"""

import argparse
import json
import secrets
import subprocess
import sys

from tessera_api_client import AuthenticatedClient
from tessera_api_client.api.customer import (
    create_authentication,
    create_user,
    get_authentication,
    list_devices,
    start_pairing,
)
from tessera_api_client.models import (
    AuthenticationKind,
    AuthenticationState,
    AuthenticationStatus,
    CreateAuthenticationRequest,
    CreateUserRequest,
    DeviceList,
    DisplayField,
    StartPairingResponse,
    User,
)


def device(args, *command):
    """Runs the command-line device with --json and returns its parsed answer."""
    out = subprocess.run(
        [args.device, "--state", args.state, "--json", *command],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def expect(response, status, model, what):
    if response.status_code != status or not isinstance(response.parsed, model):
        sys.exit(
            f"{what}: expected {status} {model.__name__}, got {response.status_code}: "
            f"{response.content[:500]!r}"
        )
    return response.parsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--state", required=True)
    args = parser.parse_args()

    client = AuthenticatedClient(base_url=args.base_url, token=args.api_key, timeout=40.0)
    user_id = f"contract-{secrets.token_hex(4)}"

    user = expect(
        create_user.sync_detailed(
            client=client, body=CreateUserRequest(user_id=user_id, display_name="Contract")
        ),
        201,
        User,
        "create user",
    )
    assert user.user_id == user_id, user

    pairing = expect(
        start_pairing.sync_detailed(user_id, client=client),
        201,
        StartPairingResponse,
        "start pairing",
    )
    enrollment = device(args, "pair", pairing.pairing_uri)
    enrollment_id = enrollment["enrollment_id"]

    devices = expect(
        list_devices.sync_detailed(user_id, client=client), 200, DeviceList, "list devices"
    )
    assert any(d.enrollment_id == enrollment_id for d in devices.devices), devices

    request = CreateAuthenticationRequest(
        kind=AuthenticationKind.TRANSACTION,
        message="Pay 120.00 EUR to ACME GmbH?",
        fields=[DisplayField(label="Amount", value="120.00 EUR")],
    )
    created = expect(
        create_authentication.sync_detailed(user_id, client=client, body=request),
        201,
        AuthenticationStatus,
        "create authentication",
    )
    assert created.state == AuthenticationState.PENDING, created

    pending = device(args, "pending", "--wait", "10")["requests"]
    ids = [r["request_id"] for r in pending]
    assert created.authentication_id in ids, pending
    device(args, "approve", created.authentication_id)

    status = expect(
        get_authentication.sync_detailed(created.authentication_id, client=client, wait=10),
        200,
        AuthenticationStatus,
        "read authentication",
    )
    assert status.state == AuthenticationState.APPROVED, status
    print(f"generated client: {user_id} paired {enrollment_id} and approved {status.authentication_id}")


if __name__ == "__main__":
    main()
