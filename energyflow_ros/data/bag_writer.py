"""Write serialized ROS 2 messages into a rosbag2 recording (MCAP or sqlite3) with ``rosbags``.

This is what ``ros2 bag record`` stores: per topic a connection with the message definition,
then CDR-serialized messages with their receive times. It needs no ROS install.
"""

from __future__ import annotations

import os
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

__all__ = ['BagRecorder', 'STORAGES']

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


class BagRecorder:
    """Collects (topic, type, receive time, CDR bytes) and writes them as one bag.

    Messages arriving out of receive-time order (different callback threads) are kept in
    memory and written sorted when the recorder closes, so the bag is always ordered.
    """

    def __init__(self, path: str | os.PathLike[str], storage: str = 'mcap') -> None:
        """Prepare a recording at ``path`` (a directory that must not exist yet).

        Raises:
            ValueError: unknown storage, or ``path`` already exists.
        """
        if storage not in STORAGES:
            raise ValueError(f'storage {storage!r} is not one of {sorted(STORAGES)}')
        self.path, self.storage = Path(path), storage
        if self.path.exists():
            raise ValueError(f'{self.path} already exists: rosbag2 writes a new directory')
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.messages: list[tuple[int, str, str, bytes]] = []

    def add(self, topic: str, msg_type: str, receive_ns: int, data: bytes) -> None:
        """Queue one serialized message; ``msg_type`` like 'sensor_msgs/msg/JointState'."""
        if msg_type not in self.typestore.types:
            raise ValueError(f'message type {msg_type!r} of {topic} is unknown to rosbags')
        self.messages.append((int(receive_ns), topic, msg_type, bytes(data)))

    def topics(self) -> dict[str, int]:
        """Messages queued per topic."""
        counts: dict[str, int] = {}
        for _, topic, _, _ in self.messages:
            counts[topic] = counts.get(topic, 0) + 1
        return counts

    def close(self) -> Path:
        """Write every queued message, sorted by receive time, and return the bag directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with Writer(self.path, version=9, storage_plugin=STORAGES[self.storage]) as writer:
            connections = {}
            for ns, topic, msg_type, data in sorted(self.messages, key=lambda m: m[0]):
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msg_type,
                                                               typestore=self.typestore)
                writer.write(connections[topic], ns, data)
        return self.path
