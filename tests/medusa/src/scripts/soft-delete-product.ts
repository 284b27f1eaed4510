/**
 * Delete a product the way Medusa does (deleteProductsWorkflow: a soft delete
 * of the product, its variants and its images):
 *
 *   npx medusa exec ./src/scripts/soft-delete-product.ts <handle>
 *
 * Prints `RESULT {"id"}`.
 */
import type { ExecArgs } from "@medusajs/framework/types"
import { deleteProductsWorkflow } from "@medusajs/medusa/core-flows"
import { productByHandle, report } from "./lib"

export default async function softDeleteProduct({ container, args }: ExecArgs) {
  const product = await productByHandle(container, args?.[0] ?? "")
  await deleteProductsWorkflow(container).run({ input: { ids: [product.id] } })
  report({ id: product.id })
}
