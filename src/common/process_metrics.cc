#include "common/process_metrics.h"

#include <dirent.h>
#include <prometheus/metric_family.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace outpost {
namespace {

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double t = 0;
      in >> t;
      return t;
    }
    in.ignore(1 << 16, '\n');
  }
  return 0;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    ProcessStats s = ReadProcessStats();
    using prometheus::MetricType;
    return {
        Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
               static_cast<double>(s.rss_bytes)),
        Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
               static_cast<double>(s.virtual_bytes)),
        Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
               MetricType::Counter, s.cpu_seconds),
        Family("process_start_time_seconds",
               "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
               s.start_time_seconds),
        Family("process_threads", "Number of OS threads in the process.", MetricType::Gauge,
               static_cast<double>(s.threads)),
        Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
               static_cast<double>(s.open_fds)),
    };
  }
};

}  // namespace

ProcessStats ReadProcessStats() {
  ProcessStats stats;
  static const long kTicks = sysconf(_SC_CLK_TCK);
  static const long kPage = sysconf(_SC_PAGESIZE);
  static const double kBoot = BootTimeSeconds();

  std::ifstream stat_file("/proc/self/stat");
  std::string line;
  if (std::getline(stat_file, line)) {
    // The command name (field 2) may contain spaces; fields resume after ')'.
    size_t close = line.rfind(')');
    if (close != std::string::npos) {
      std::istringstream rest(line.substr(close + 2));
      std::string field;
      // Fields 3.. : state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
      // utime(14) stime(15) cutime cstime priority nice num_threads(20) itrealvalue starttime(22)
      // vsize(23) rss(24)
      std::vector<std::string> f;
      while (rest >> field) f.push_back(field);
      auto at = [&](size_t n) -> double {
        return n - 3 < f.size() ? std::atof(f[n - 3].c_str()) : 0;
      };
      stats.cpu_seconds = (at(14) + at(15)) / static_cast<double>(kTicks);
      stats.threads = static_cast<int64_t>(at(20));
      stats.start_time_seconds = kBoot + at(22) / static_cast<double>(kTicks);
      stats.virtual_bytes = static_cast<int64_t>(at(23));
      stats.rss_bytes = static_cast<int64_t>(at(24)) * kPage;
    }
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++stats.open_fds;
    }
    closedir(dir);
    --stats.open_fds;  // the directory stream itself
  }
  return stats;
}

std::shared_ptr<prometheus::Collectable> MakeProcessCollector() {
  return std::make_shared<ProcessCollector>();
}

}  // namespace outpost
