// The demo shop's tax service (Java): GET /tax?cents=N answers the VAT on an amount.
//
// No tracing code: the Tracelight injector's JAVA_TOOL_OPTIONS loads the OpenTelemetry Java agent
// (it instruments the JDK's HTTP server), configured by the injected OTEL_* variables.
// Runs from source: `java Tax.java`.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Tax {
    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8090"));
        HttpServer server = HttpServer.create(new InetSocketAddress("0.0.0.0", port), 0);
        server.createContext("/tax", Tax::tax);
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        // The Java agent flushes its spans in its own shutdown hook on SIGTERM.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> server.stop(0)));
        System.out.println("tax: listening on :" + port);
    }

    static void tax(HttpExchange exchange) throws IOException {
        String query = exchange.getRequestURI().getQuery();
        long cents = 0;
        if (query != null) {
            for (String kv : query.split("&")) {
                if (kv.startsWith("cents=")) {
                    cents = Long.parseLong(kv.substring("cents=".length()));
                }
            }
        }
        long tax = Math.round(cents * 0.2);
        byte[] body = ("{\"cents\":" + cents + ",\"tax\":" + tax + "}").getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("content-type", "application/json");
        exchange.sendResponseHeaders(200, body.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(body);
        }
    }
}
