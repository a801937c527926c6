"""The Spark Structured Streaming peer of scripts/bench.sh: the original
job's reduceByKeyAndWindow(window 60 s, slide 5 s) on client_real_ip, in its
modern form — a windowed count over the Kafka source, local[2] (this
machine's cores). Runs until every record of the topic has gone through a
micro-batch, then prints one JSON line.

Usage: ip_window_count.py BROKERS TOPIC RECORDS
"""
import json
import sys
import tempfile
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main():
    brokers, topic, records = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("ipstats-bench-spark")
        .config("spark.sql.shuffle.partitions", "6")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    lines = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", brokers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    ip = F.get_json_object(F.col("value").cast("string"), "$.client_real_ip")
    counts = (
        lines.select(ip.alias("ip"), F.col("timestamp"))
        .where(F.col("ip").isNotNull())
        .withWatermark("timestamp", "0 seconds")
        .groupBy(F.window("timestamp", "60 seconds", "5 seconds"), "ip")
        .count()
    )
    started = time.time()
    query = (
        counts.writeStream.outputMode("update")
        .format("noop")
        .option("checkpointLocation", tempfile.mkdtemp(prefix="ipstats-bench-spark-"))
        .start()
    )
    seen, total = set(), 0
    while total < records:
        time.sleep(0.2)  # progress polling of this benchmark driver
        for progress in query.recentProgress:
            if progress["batchId"] not in seen:
                seen.add(progress["batchId"])
                total += progress["numInputRows"]
    wall = time.time() - started
    query.stop()
    spark.stop()
    print(json.dumps({"records": total, "wall_s": round(wall, 3), "batches": len(seen)}))


if __name__ == "__main__":
    main()
