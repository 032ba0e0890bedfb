"""USAGE.md "S3 Destination"."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.options import Bool, OptionProblems, RequiredText, Text, WireFormat, _partition_by, choice


class S3DestinationOptions(DestinationOptions):
    bucket: RequiredText
    prefix: Text | None = None
    endpoint: Text | None = None
    region: Text | None = None
    access_key: Text | None = None
    secret_key: Text | None = None
    session_token: Text | None = None
    force_path_style: Bool = False
    use_fips: Bool | None = None
    use_dualstack: Bool | None = None
    format: WireFormat = "json"
    compression: choice("none", "gzip") = "none"
    partition_by: Annotated[list[str], BeforeValidator(_partition_by)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> S3DestinationOptions:
        problems = []
        if bool(self.access_key) != bool(self.secret_key):
            have, need = ("access_key", "secret_key") if self.access_key else ("secret_key", "access_key")
            problems.append((need, f"required when {have} is set"))
        if self.session_token and not (self.access_key and self.secret_key):
            problems.append(("session_token", "needs access_key and secret_key"))
        if problems:
            raise OptionProblems(problems)
        return self


__all__ = ["S3DestinationOptions"]
