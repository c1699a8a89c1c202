"""A real tessera-server process on a loopback port, the customer API over HTTP, and a local
webhook receiver standing in for FCM: what the binding tests drive the generated module against.

The server binary comes from $TESSERA_SERVER_BIN (bindings/tests/run.sh sets it)."""

import base64
import json
import os
import queue
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PushReceiver:
    """The application's push webhook: records every push the server sends."""

    def __init__(self):
        self.pushes = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                receiver.pushes.put(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}/push"

    def next(self, timeout=10):
        return self.pushes.get(timeout=timeout)

    def close(self):
        self.http.shutdown()


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class TlsProxy:
    """A TLS-terminating proxy in front of the server's plain-HTTP listener, with a certificate
    from the test CA in $TESSERA_TEST_TLS_DIR (bindings/tests/run.sh makes it): the devices'
    calls go over HTTPS, verified by the SDK's platform verifier. `handshakes` counts completed
    TLS handshakes."""

    def __init__(self, target_port, tls_dir, name="server"):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(os.path.join(tls_dir, f"{name}.pem"),
                                     os.path.join(tls_dir, f"{name}.key"))
        self.target_port, self.handshakes, self.closed = target_port, 0, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):
            client.close()
            return
        self.handshakes += 1
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            tls.close()
            return

        def pump(source, sink):
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    try:
                        s.close()
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(tls, upstream), daemon=True).start()
        pump(upstream, tls)

    def close(self):
        self.closed = True
        self.listener.close()


class Server:
    """tessera-server serve on SQLite in a temporary folder, with one application. With
    $TESSERA_TEST_TLS_DIR, devices reach it through a TLS proxy (`public_url` is https)."""

    def __init__(self, webhook=None, qr_policy=None):
        binary = os.environ.get("TESSERA_SERVER_BIN", "tessera-server")
        self.dir = tempfile.TemporaryDirectory(prefix="tessera-bindings-")
        database = f"sqlite://{self.dir.name}/tessera.db"
        admin = [binary, "admin", "--database", database]
        app = json.loads(subprocess.run(admin + ["create-app", "Example Bank"], check=True,
                                        capture_output=True, text=True).stdout)
        self.application_id, self.api_key = app["application_id"], app["api_key"]
        if webhook:
            subprocess.run(admin + ["set-push-webhook", self.application_id, webhook],
                           check=True, capture_output=True)
        if qr_policy:
            subprocess.run(admin + ["set-qr-policy", self.application_id, qr_policy],
                           check=True, capture_output=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        tls_dir = os.environ.get("TESSERA_TEST_TLS_DIR")
        self.tls = TlsProxy(port, tls_dir) if tls_dir else None
        self.public_url = f"https://localhost:{self.tls.port}" if self.tls else self.url
        self.log = open(os.path.join(self.dir.name, "server.log"), "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--database", database,
             "--ciba-poll-interval", "1", "--public-url", self.public_url],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError("tessera-server did not start")
                time.sleep(0.1)

    def close(self):
        if self.tls:
            self.tls.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()
        self.dir.cleanup()

    # The customer API, as the customer's backend calls it.
    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {self.api_key}")
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=40) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            error = json.loads(e.read())["error"]
            raise ApiError(e.code, error["code"], error["message"]) from None

    def create_user(self, user_id, display_name=None):
        body = {"user_id": user_id}
        if display_name:
            body["display_name"] = display_name
        return self.call("POST", "/v1/users", body)

    def start_pairing(self, user_id):
        return self.call("POST", f"/v1/users/{user_id}/pairings", {})

    def relay_pairing(self, user_id, mobile_payload):
        return self.call("POST", f"/v1/users/{user_id}/relay-pairings",
                         {"mobile_payload": mobile_payload})

    def authenticate(self, user_id, kind="approval", **options):
        return self.call("POST", f"/v1/users/{user_id}/authentications",
                         dict(kind=kind, **options))

    def authentication(self, authentication_id, wait=0):
        return self.call("GET", f"/v1/authentications/{authentication_id}?wait={wait}")

    def create_qr_session(self, **options):
        return self.call("POST", "/v1/qr-sessions", options)

    def qr_session(self, session_id, wait=0):
        return self.call("GET", f"/v1/qr-sessions/{session_id}?wait={wait}")

    # OpenID CIBA, as a relying party calls it.
    def register_ciba_client(self, name):
        """A poll-mode relying party with client_secret_basic: (client_id, client_secret)."""
        registered = self.call("POST", "/v1/ciba/clients", {
            "client_name": name,
            "backchannel_token_delivery_mode": "poll",
            "token_endpoint_auth_method": "client_secret_basic",
        })
        return registered["client_id"], registered["client_secret"]

    def oauth_post(self, path, client, form):
        """A form POST with HTTP Basic client authentication: (status, JSON body)."""
        quote = urllib.parse.quote_plus
        basic = base64.b64encode(f"{quote(client[0])}:{quote(client[1])}".encode()).decode()
        request = urllib.request.Request(self.url + path,
                                         data=urllib.parse.urlencode(form).encode(),
                                         method="POST")
        request.add_header("authorization", f"Basic {basic}")
        request.add_header("content-type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
