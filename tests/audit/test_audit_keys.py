"""Finding and checking the public keys that verify logs and receipts."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhft.audit import KeyLoadError, find_party_key, find_server_key, load_public_key
from fedhft.protocol import Credentials, init_ca, issue_organization, issue_server, load_ca

ORG = "st-mary-hospital"


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials | Path]:
    """A consortium CA with one organization, one server, and a foreign CA's organization."""
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca("northern-health-finance", root / "ca")
    foreign = init_ca("northern-health-finance", root / "foreign-ca")
    return {
        "root": root,
        "org": issue_organization(ca, ORG, root / "org"),
        "other": issue_organization(ca, "harbour-bank", root / "other"),
        "server": issue_server(ca, "agg.example.org", root / "server"),
        "foreign": issue_organization(foreign, ORG, root / "foreign"),
    }


def _auditor_folder(tmp_path: Path, consortium: dict[str, Credentials | Path], *names: str) -> Path:
    """An auditor's --certs folder: ca.crt plus the named parties' identity certificates."""
    root = consortium["root"]
    assert isinstance(root, Path)
    folder = tmp_path / "certs"
    folder.mkdir()
    shutil.copy(root / "ca" / "ca.crt", folder / "ca.crt")
    for name in names:
        shutil.copy(root / name / "identity.crt", folder / f"{_holder(consortium, name)}.crt")
    return folder


def _holder(consortium: dict[str, Credentials | Path], name: str) -> str:
    credentials = consortium[name]
    assert isinstance(credentials, Credentials)
    return credentials.name


def _identity(consortium: dict[str, Credentials | Path], name: str) -> bytes:
    credentials = consortium[name]
    assert isinstance(credentials, Credentials)
    return credentials.identity_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _raw(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined, no-any-return]


def test_ca_issued_identity_certificate_is_found_and_checked(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """`<party>.crt` issued by the folder's CA yields that party's identity key."""
    folder = _auditor_folder(tmp_path, consortium, "org")
    found = find_party_key(folder, ORG)
    assert found.ca_checked and _raw(found.public_key) == _identity(consortium, "org")


def test_credentials_folder_layout_is_accepted(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """A party's credentials folder as `fedhft ca issue` writes it (`<party>/identity.crt`)
    is found too."""
    root = consortium["root"]
    assert isinstance(root, Path)
    folder = _auditor_folder(tmp_path, consortium)
    (folder / ORG).mkdir()
    shutil.copy(root / "org" / "identity.crt", folder / ORG / "identity.crt")
    assert _raw(find_party_key(folder, ORG).public_key) == _identity(consortium, "org")


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """A certificate for the same name from a foreign CA is refused."""
    root = consortium["root"]
    assert isinstance(root, Path)
    folder = _auditor_folder(tmp_path, consortium)
    shutil.copy(root / "foreign" / "identity.crt", folder / f"{ORG}.crt")
    with pytest.raises(KeyLoadError, match="not issued by the consortium CA"):
        find_party_key(folder, ORG)


def test_another_partys_certificate_under_this_name_is_refused(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """Harbour Bank's certificate saved as st-mary-hospital.crt does not pass for St Mary's."""
    root = consortium["root"]
    assert isinstance(root, Path)
    folder = _auditor_folder(tmp_path, consortium)
    shutil.copy(root / "other" / "identity.crt", folder / f"{ORG}.crt")
    with pytest.raises(KeyLoadError, match="not issued to"):
        find_party_key(folder, ORG)


def test_certificate_must_be_valid_when_the_records_were_signed(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """Records dated before the certificate was issued do not verify with it."""
    folder = _auditor_folder(tmp_path, consortium, "org")
    long_ago = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(KeyLoadError, match="valid from"):
        find_party_key(folder, ORG, at=[long_ago])


def test_server_key_is_found_by_its_server_name(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """Among organization certificates, the one naming fedhft://server/ is the server's."""
    folder = _auditor_folder(tmp_path, consortium, "org", "other", "server")
    found = find_server_key(folder)
    assert found.ca_checked and _raw(found.public_key) == _identity(consortium, "server")
    assert _raw(find_server_key(folder, "agg.example.org").public_key) == _identity(
        consortium, "server"
    )


def test_organization_certificate_cannot_pass_for_the_server(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """An organization's identity certificate saved as server.crt is not a server key."""
    root = consortium["root"]
    assert isinstance(root, Path)
    folder = _auditor_folder(tmp_path, consortium)
    shutil.copy(root / "org" / "identity.crt", folder / "server.crt")
    with pytest.raises(KeyLoadError, match="server"):
        find_server_key(folder)


def test_bare_public_keys_are_accepted_without_a_ca(tmp_path: Path) -> None:
    """Without a CA in the folder, a PEM public key is taken as given (and says so)."""
    from audit_helpers import fixed_key

    key = fixed_key("bare")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / f"{ORG}.pem").write_bytes(pem)
    (tmp_path / "aggregator.pem").write_bytes(pem)
    found = find_party_key(tmp_path, ORG)
    assert not found.ca_checked and _raw(found.public_key) == _raw(key.public_key())
    assert not find_server_key(tmp_path).ca_checked


def test_private_key_files_are_refused_without_echoing_them(tmp_path: Path) -> None:
    """Handing the auditor a private key is refused; the message has none of its bytes."""
    from audit_helpers import fixed_key

    pem = fixed_key("x").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyLoadError, match="private key") as caught:
        load_public_key(path)
    assert pem.decode().splitlines()[1] not in str(caught.value)


def test_non_ed25519_keys_are_refused(tmp_path: Path) -> None:
    """An ECDSA key (e.g. a TLS key) is not an identity key."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "tls.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyLoadError, match="Ed25519"):
        load_public_key(path)


def test_missing_party_is_reported_with_what_was_looked_for(tmp_path: Path) -> None:
    """A folder without the party's file names the files it looked for."""
    with pytest.raises(KeyLoadError, match=rf"{ORG}\.crt"):
        find_party_key(tmp_path, ORG)


def test_ca_present_but_bare_key_given_is_refused(
    tmp_path: Path, consortium: dict[str, Credentials | Path]
) -> None:
    """With a CA in the folder, a bare public key (no certificate) is refused."""
    from audit_helpers import fixed_key

    folder = _auditor_folder(tmp_path, consortium)
    pem = (
        fixed_key("bare")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (folder / f"{ORG}.pem").write_bytes(pem)
    with pytest.raises(KeyLoadError, match="bare public key"):
        find_party_key(folder, ORG)


def test_load_ca_fixture_is_a_real_ca(consortium: dict[str, Credentials | Path]) -> None:
    """Sanity: the fixture's CA loads back with the protocol's loader."""
    root = consortium["root"]
    assert isinstance(root, Path)
    assert load_ca(root / "ca").consortium == "northern-health-finance"
