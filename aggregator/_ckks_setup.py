"""Provisioning of the CKKS mode: run the key ceremony and place its outputs.

`ckks_ceremony` runs `fedhft.protocol.CKKSCeremony` for a consortium at provisioning
time, next to `fedhft ca issue`: it reads each organization's CA-certified X25519 sealing
key from its credentials folder, seals the consortium's CKKS secret context to each of
them (``<org credentials>/ckks-secret.sealed``), and writes the keyless public context
the server adds ciphertexts with (``<server credentials>/ckks-public.context``).

Notes:
    The ceremony must run where the secret context may exist for a moment (the
    consortium operator's provisioning machine, offline); it exists only inside the
    call. Each sealed file is written with mode 0600 and opens only with its
    organization's sealing private key. As ARCHITECTURE.md §4.2 says, every organization holds
    the same secret key: the server plus one colluding organization can decrypt every
    upload, which is why the masking mode is the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fedhft.policies import ConsortiumConfig
from fedhft.protocol import (
    CKKSCeremony,
    CKKSParameters,
    Role,
    load_credentials,
    verify_sealing_certificate,
)
from fedhft.protocol.session_codec import CKKS_PUBLIC_FILE, CKKS_SEALED_FILE

from .errors import AggregatorError


def ckks_ceremony(
    consortium: ConsortiumConfig,
    organization_dirs: Iterable[str | os.PathLike[str]],
    server_dir: str | os.PathLike[str],
    *,
    scale_bits: int = 36,
) -> CKKSCeremony:
    """Create the consortium's CKKS keys; seal them into each organization's folder.

    Args:
        consortium: the configuration (its id, enrolled organizations and the
            ``secure_aggregation.clip`` bound every uploaded value respects).
        organization_dirs: the credentials folder of every enrolled organization
            (``fedhft ca issue --org``); each must hold a sealing certificate of the
            consortium CA.
        server_dir: the server's credentials folder; receives the public context.
        scale_bits: CKKS precision (see `CKKSParameters.choose`).

    Raises:
        AggregatorError: a folder is not an enrolled organization's, one is missing, or
            an output file exists already (keys are never overwritten).
    """
    server = load_credentials(server_dir)
    if server.role is not Role.SERVER:
        raise AggregatorError(f"{server_dir} holds organization credentials, not the server's")
    sealing_keys = {}
    folders: dict[str, Path] = {}
    for directory in organization_dirs:
        credentials = load_credentials(directory)
        if credentials.role is not Role.ORGANIZATION:
            raise AggregatorError(f"{directory} holds server credentials, not an organization's")
        if credentials.ca_certificate != server.ca_certificate:
            raise AggregatorError(f"{directory} was issued by another CA than the server's")
        assert credentials.sealing_certificate is not None  # Organizations always have one.
        sealing_keys[credentials.name] = verify_sealing_certificate(
            credentials.sealing_certificate, server.ca_certificate, credentials.name
        )
        folders[credentials.name] = Path(directory)
    enrolled = set(consortium.enrolled())
    if set(sealing_keys) != enrolled:
        missing, extra = sorted(enrolled - set(sealing_keys)), sorted(set(sealing_keys) - enrolled)
        raise AggregatorError(
            f"the ceremony needs exactly the enrolled organizations; missing {missing}, "
            f"not enrolled {extra}"
        )
    targets = [folders[org] / CKKS_SEALED_FILE for org in sorted(folders)]
    targets.append(Path(server_dir) / CKKS_PUBLIC_FILE)
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise AggregatorError(f"refusing to overwrite CKKS key material: {existing}")
    parameters = CKKSParameters.choose(
        max_clients=len(enrolled),
        # Row weights (at most 1) travel in the same vectors as the clipped values.
        value_bound=max(consortium.secure_aggregation.clip, 1.0),
        scale_bits=scale_bits,
    )
    ceremony = CKKSCeremony.create(
        consortium=consortium.consortium,
        sealing_keys=sealing_keys,
        parameters=parameters,
    )
    for org, sealed in ceremony.sealed_keys.items():
        _write_new(folders[org] / CKKS_SEALED_FILE, sealed, mode=0o600)
    _write_new(Path(server_dir) / CKKS_PUBLIC_FILE, ceremony.public_context, mode=0o644)
    return ceremony


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
