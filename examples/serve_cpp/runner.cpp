// Serve an ETAModel exported by export_model.py: load the AOTInductor package with libtorch only
// (no Python), score the request stored next to it, write the outputs and time repeated requests.
//
// usage: eta_runner MODEL.pt2 DIR [REPEAT]
//   reads DIR/{history,target,times,target_time}.bin (int64), writes DIR/cpp_logits.bin (float32)
//   and DIR/cpp_positions.bin (int64), prints the logits, the first row's retrieved positions and
//   the median latency of REPEAT requests.

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// A .bin file: little-endian int64 ndim, the ndim sizes, then the raw data.
at::Tensor read_bin(const std::string& path, at::ScalarType dtype) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  int64_t ndim = 0;
  in.read(reinterpret_cast<char*>(&ndim), sizeof ndim);
  std::vector<int64_t> shape(static_cast<size_t>(ndim));
  in.read(reinterpret_cast<char*>(shape.data()), static_cast<std::streamsize>(ndim * sizeof(int64_t)));
  at::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  in.read(reinterpret_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!in) throw std::runtime_error(path + " is shorter than its header says");
  return t;
}

void write_bin(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.contiguous();
  std::ofstream out(path, std::ios::binary);
  int64_t ndim = t.dim();
  out.write(reinterpret_cast<const char*>(&ndim), sizeof ndim);
  for (int64_t s : t.sizes()) out.write(reinterpret_cast<const char*>(&s), sizeof s);
  out.write(reinterpret_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 DIR [REPEAT]\n";
    return 2;
  }
  const std::string dir = argv[2];
  const int repeat = argc > 3 ? std::stoi(argv[3]) : 0;
  try {
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::vector<at::Tensor> inputs;
    for (const char* name : {"history", "target", "times", "target_time"}) {
      inputs.push_back(read_bin(dir + "/" + name + ".bin", torch::kInt64));
    }
    std::vector<at::Tensor> outputs = loader.run(inputs);
    write_bin(dir + "/cpp_logits.bin", outputs.at(0));
    write_bin(dir + "/cpp_positions.bin", outputs.at(1));
    std::cout << "logits " << outputs[0].sizes() << ": " << outputs[0].slice(0, 0, 8) << "\n";
    std::cout << "retrieved positions of row 0: " << outputs[1][0] << "\n";
    if (repeat > 0) {
      std::vector<double> ms;
      for (int i = 0; i < repeat; ++i) {
        auto start = std::chrono::steady_clock::now();
        loader.run(inputs);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
      std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
      std::cout << "request: " << ms[ms.size() / 2] << " ms median of " << repeat << "\n";
    }
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
