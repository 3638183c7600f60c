"""inference.proto is wire-compatible with tritonclient's: same names, field numbers and types.

Every message and RPC we define must exist in tritonclient's ``service_pb2`` with
identical fields; a difference would silently corrupt data on the wire.
"""

from __future__ import annotations

import tritonclient.grpc.service_pb2 as triton_pb
from google.protobuf.descriptor import Descriptor

from sloserve.protocol.generated import inference_pb2 as pb

EXPECTED_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


def field_signature(message: Descriptor) -> dict[str, tuple[object, ...]]:
    """Each field as (number, wire type, repeated, element type, oneof, map entry)."""
    return {
        field.name: (
            field.number,
            field.type,
            field.is_repeated,
            field.message_type.full_name if field.message_type else None,
            field.containing_oneof.name if field.containing_oneof else None,
            bool(field.message_type and field.message_type.GetOptions().map_entry),
        )
        for field in message.fields
    }


def all_messages(message: Descriptor) -> list[Descriptor]:
    return [message, *(inner for nested in message.nested_types for inner in all_messages(nested))]


def test_every_message_matches_tritonclient_field_for_field() -> None:
    ours = [m for top in pb.DESCRIPTOR.message_types_by_name.values() for m in all_messages(top)]
    theirs = {m.full_name: m for top in triton_pb.DESCRIPTOR.message_types_by_name.values() for m in all_messages(top)}

    assert len(ours) > 40
    for message in ours:
        assert message.full_name in theirs, f"{message.full_name} is not in tritonclient's protocol"
        assert field_signature(message) == field_signature(theirs[message.full_name]), message.full_name


def test_service_has_the_rpcs_we_serve_with_tritonclients_signatures() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in ours.methods} == EXPECTED_RPCS
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )
