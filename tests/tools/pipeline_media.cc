// pipeline_media: writes the images and videos the pipeline tests and
// benchmark feed to outpost (nothing is downloaded). Colours by name: red,
// green, blue, black, white, grey.
//
//   pipeline_media image PATH WIDTH HEIGHT COLOUR     (format from the extension)
//   pipeline_media video PATH WIDTH HEIGHT FPS COLOUR[,COLOUR...] FRAMES
//       MJPG in .avi; frame i has colour i modulo the list
//   pipeline_media noise-video PATH WIDTH HEIGHT FPS FRAMES
//       random pixels (fixed seed): a decoder's realistic worst case
//
// Exit 0 on success, 1 when the file cannot be written, 2 for bad arguments.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

bool Colour(const std::string& name, cv::Scalar* out) {
  static const std::map<std::string, cv::Scalar> kColours = {
      {"red", {0, 0, 255}}, {"green", {0, 255, 0}},     {"blue", {255, 0, 0}},
      {"black", {0, 0, 0}}, {"white", {255, 255, 255}}, {"grey", {128, 128, 128}}};
  auto it = kColours.find(name);
  if (it == kColours.end()) return false;
  *out = it->second;
  return true;
}

int Usage() {
  std::fprintf(stderr,
               "usage: pipeline_media image PATH W H COLOUR\n"
               "       pipeline_media video PATH W H FPS COLOUR[,COLOUR...] FRAMES\n"
               "       pipeline_media noise-video PATH W H FPS FRAMES\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 4) return Usage();
  const std::string& kind = args[0];
  const std::string& path = args[1];
  int w = std::atoi(args[2].c_str()), h = std::atoi(args[3].c_str());
  if (w <= 0 || h <= 0) return Usage();
  if (kind == "image" && args.size() == 5) {
    cv::Scalar c;
    if (!Colour(args[4], &c)) return Usage();
    cv::Mat m(h, w, CV_8UC3, c);
    if (!cv::imwrite(path, m)) {
      std::fprintf(stderr, "pipeline_media: cannot write %s\n", path.c_str());
      return 1;
    }
    return 0;
  }
  bool noise = kind == "noise-video";
  if ((kind == "video" && args.size() == 7) || (noise && args.size() == 6)) {
    double fps = std::atof(args[4].c_str());
    int frames = std::atoi(args[noise ? 5 : 6].c_str());
    std::vector<cv::Scalar> colours;
    if (!noise) {
      std::stringstream list(args[5]);
      std::string name;
      while (std::getline(list, name, ',')) {
        cv::Scalar c;
        if (!Colour(name, &c)) return Usage();
        colours.push_back(c);
      }
    }
    if (fps <= 0 || frames <= 0 || (!noise && colours.empty())) return Usage();
    cv::VideoWriter writer(path, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), fps, cv::Size(w, h));
    if (!writer.isOpened()) {
      std::fprintf(stderr, "pipeline_media: cannot write video %s\n", path.c_str());
      return 1;
    }
    cv::RNG rng(1234);
    cv::Mat m(h, w, CV_8UC3);
    for (int i = 0; i < frames; ++i) {
      if (noise) {
        rng.fill(m, cv::RNG::UNIFORM, 0, 256);
      } else {
        m.setTo(colours[i % colours.size()]);
      }
      writer.write(m);
    }
    writer.release();
    return 0;
  }
  return Usage();
}
