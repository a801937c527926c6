package ipstats.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.time.Duration;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.kstream.TimeWindows;

/**
 * Hopping-window count of requests per client IP (window 60 s, advance 5 s),
 * as ipstats and the original Spark job compute it. Runs until `expected`
 * valid records have reached the windowed aggregation, then prints one JSON
 * line with the wall time and exits.
 *
 * Usage: IpWindowCount BROKERS TOPIC EXPECTED_VALID_RECORDS
 */
public final class IpWindowCount {
  private static final ObjectMapper JSON = new ObjectMapper();

  static String clientIp(String line) {
    try {
      JsonNode node = JSON.readTree(line);
      JsonNode ip = node == null ? null : node.get("client_real_ip");
      return ip != null && ip.isTextual() ? ip.asText() : null;
    } catch (Exception notJson) {
      return null;
    }
  }

  public static void main(String[] args) throws Exception {
    String brokers = args[0];
    String topic = args[1];
    long expected = Long.parseLong(args[2]);
    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, "ipstats-bench-" + UUID.randomUUID());
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Runtime.getRuntime().availableProcessors());
    props.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/ipstats-bench-streams");
    props.put("auto.offset.reset", "earliest");

    AtomicLong counted = new AtomicLong();
    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(topic, Consumed.with(Serdes.ByteArray(), Serdes.String()))
        .mapValues(IpWindowCount::clientIp)
        .filter((key, ip) -> ip != null)
        .selectKey((key, ip) -> ip)
        .repartition(Repartitioned.with(Serdes.String(), Serdes.String()).withName("by-ip"))
        .peek((ip, value) -> counted.incrementAndGet())
        .groupByKey()
        .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofSeconds(60)).advanceBy(Duration.ofSeconds(5)))
        .count();

    long started = System.nanoTime();
    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    streams.start();
    while (counted.get() < expected) {
      Thread.sleep(20); // progress polling of this benchmark driver
    }
    double wall = (System.nanoTime() - started) / 1e9;
    streams.close(Duration.ofSeconds(30));
    streams.cleanUp();
    System.out.printf("{\"records\":%d,\"wall_s\":%.3f}%n", counted.get(), wall);
  }
}
