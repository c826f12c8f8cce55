"""Append an exchange, read the history and build a prompt context on a running chatmem server."""

from __future__ import annotations

import sys

import grpc

from chatmem.v1 import preferences_service_pb2 as prefs
from chatmem.v1 import preferences_service_pb2_grpc as prefs_grpc
from chatmem.v1 import resources_pb2 as res
from chatmem.v1 import thread_memory_service_pb2 as tm
from chatmem.v1 import thread_memory_service_pb2_grpc as tm_grpc


def main(target: str = "127.0.0.1:50051") -> None:
    """Run the quickstart against ``target``."""
    with grpc.insecure_channel(target) as channel:
        threads = tm_grpc.ThreadMemoryServiceStub(channel)
        preferences = prefs_grpc.PreferencesServiceStub(channel)

        appended = threads.AppendMessages(
            tm.AppendMessagesRequest(
                thread_id="quickstart-1",
                user_id="ada",
                request_id="quickstart-1-turn-1",  # a retry with this id stores nothing twice
                messages=[
                    res.MessageInput(role=res.ROLE_USER, content="Hi! I'm Ada."),
                    res.MessageInput(role=res.ROLE_ASSISTANT, content="Hello Ada, how can I help?"),
                ],
            ),
            timeout=5,
        )
        print("seqs:", list(appended.seqs), "durability:", res.Durability.Name(appended.durability))

        history = threads.GetHistory(tm.GetHistoryRequest(thread_id="quickstart-1", limit=10), timeout=5)
        for m in history.messages:
            print(f"{m.seq} {res.Role.Name(m.role)}: {m.content}")

        preferences.SetPreferences(
            prefs.SetPreferencesRequest(user_id="ada", preferences={"language": "English", "tone": "brief"}),
            timeout=5,
        )
        context = threads.GetContext(tm.GetContextRequest(thread_id="quickstart-1", user_id="ada"), timeout=5)
        print(context.context)


if __name__ == "__main__":
    main(*sys.argv[1:])
