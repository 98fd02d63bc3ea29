"""Result keys without an expiry get one; keys with one, and other keys, are left as they are."""

import pytest

from app.services.results import expire_orphaned_results


@pytest.fixture
def client(broker_client):
    client = broker_client
    created = []
    yield client, created
    if created:
        client.delete(*created)


def test_persistent_result_keys_get_an_expiry(client):
    client, created = client
    persistent = [f"celery-task-meta-test-{i}" for i in range(1203)]
    with_ttl = "celery-task-meta-test-has-ttl"
    unrelated = "not-a-result-key-test"
    created += [*persistent, with_ttl, unrelated]
    pipeline = client.pipeline()
    for key in persistent:
        pipeline.set(key, "{}")
    pipeline.set(with_ttl, "{}", ex=50)
    pipeline.set(unrelated, "x")
    pipeline.execute()

    summary = expire_orphaned_results(client, 3600)

    assert summary["keys_given_expiry"] == len(persistent)
    assert all(0 < client.ttl(key) <= 3600 for key in persistent[:: 97])
    assert client.ttl(with_ttl) <= 50
    assert client.ttl(unrelated) == -1
    assert expire_orphaned_results(client, 3600)["keys_given_expiry"] == 0, "idempotent"
