"""The hand-written grpclib client matches the service in the generated descriptor, method by method."""

from __future__ import annotations

from grpclib.client import Channel
from grpclib.const import Cardinality

from daemon_app.comm.rpc import SERVICE, DaemonServiceClient
from daemon_app.proto import daemon_pb2 as pb


def test_every_rpc_of_the_proto_is_in_the_client_with_its_path_types_and_cardinality():
    service = pb.DESCRIPTOR.services_by_name["DaemonService"]
    assert service.full_name == SERVICE
    channel = Channel("127.0.0.1", 1)  # never connects: only the method objects are inspected
    try:
        client = DaemonServiceClient(channel)
        for method in service.methods:
            rpc = getattr(client, method.name)
            assert rpc.name == f"/{SERVICE}/{method.name}"
            assert rpc.request_type.DESCRIPTOR is method.input_type
            assert rpc.reply_type.DESCRIPTOR is method.output_type
            expected = Cardinality.UNARY_STREAM if method.server_streaming else Cardinality.UNARY_UNARY
            assert not method.client_streaming
            assert rpc._cardinality is expected
        assert {m.name for m in service.methods} == {n for n in vars(client) if n[0].isupper()}
    finally:
        channel.close()
