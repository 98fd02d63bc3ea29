"""The admin's WSGI application served over real HTTP on 127.0.0.1 from the test process (a thread per
request), and a staff login on it: what gunicorn serves, without starting a copy of the project."""

import threading
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx

STAFF_USER = "ops-tests"
STAFF_PASSWORD = "s3cret-for-tests"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # the access log would fill the test output
        pass


@contextmanager
def serving_admin():
    """Yield the base URL of the admin (app.core.wsgi:application) served on a free port."""
    from django.contrib.auth import get_user_model

    from app.core.wsgi import application

    users = get_user_model()
    if not users.objects.filter(username=STAFF_USER).exists():
        users.objects.create_superuser(STAFF_USER, password=STAFF_PASSWORD)
    server = make_server("127.0.0.1", 0, application, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def logged_in_client(base: str):
    """Yield an HTTP client holding a staff session, logged in through the admin's own login form."""
    with httpx.Client(base_url=base, timeout=30) as client:
        client.get("/admin/login/")
        answer = client.post("/admin/login/?next=/admin/", data={
            "username": STAFF_USER, "password": STAFF_PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/admin/"}, headers={"Referer": f"{base}/admin/login/"})
        assert answer.status_code == 302 and "sessionid" in client.cookies, answer.text[:500]
        yield client
